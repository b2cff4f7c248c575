"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``, backed by tokenrelay jobs.

Each request becomes a job, rendered by ``api.openai_format``; ``GET .../{id}/events`` with
``Last-Event-ID`` resumes its stream in the same format. The job runs to its end whether or
not the client stays connected.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.compat import (
    JOB_HEADER,
    STREAM_HEADERS,
    ModelName,
    catalog,
    compat_info,
    finished,
    requested_model,
    responses,
    submit_drop_in,
    unix_seconds,
)
from api.deps import RelayDep, TenantDep
from api.encoding import SSE_MEDIA_TYPE, JSONBody
from api.openai_format import View, chunk_stream, completion_body
from api.reading import load_job, resume_point
from api.schemas import Message
from api.state import Relay
from tokenrelay.wire import ZERO_ID, EventId

router = APIRouter(prefix="/v1", tags=["openai-compatible"])

PARAMS = {
    f"options.{name}": name for name in ("temperature", "top_p", "max_tokens", "stop", "seed")
}
CREATED = responses(
    "SSE chunks with `stream`; else the completion, or at once with `background`",
    ("application/json", SSE_MEDIA_TYPE),
    {
        400: "malformed request",
        413: "request body or prompt too large",
        422: "invalid request, unknown upstream, or a job the upstream refused",
        429: "this key's rate limit, or the upstream's (not streaming)",
        503: "the queue is full, Redis is unreachable, or the job failed upstream (not streaming)",
    },
)
RETRIEVED = responses("the job as a completion now", ("application/json",), {404: "no such job"})
FOLLOWED = responses(
    "the job's chunks: replayed, then live until `data: [DONE]`",
    (SSE_MEDIA_TYPE,),
    {
        400: "malformed or never issued event id",
        404: "no such job",
        410: "the event id is older than what is kept",
    },
)
LISTED = responses("each upstream's default model", ("application/json",), {})


# --- requests -----------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None


class _Request(BaseModel):
    """What both endpoints take. Other OpenAI fields (``user``, ``tool_choice``, ...) are
    accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    background: bool | None = False
    metadata: dict[str, str] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported: a job streams one answer")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type", "text") != "text":
            raise ValueError("only the 'text' response format is supported")
        return value

    def job_fields(self) -> dict[str, Any]:
        max_tokens = self.max_completion_tokens or self.max_tokens
        options = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": max_tokens,
            "stop": self.stop,
            "seed": self.seed,
        }
        return {
            "options": {k: v for k, v in options.items() if v is not None},
            "metadata": self.metadata or {},
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Request):
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)


class CompletionRequest(_Request):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("give one prompt: a job streams one answer")
        return value


# --- routes -------------------------------------------------------------------------------------


def _streaming(r: Relay, view: View, after: EventId) -> StreamingResponse:
    return StreamingResponse(
        chunk_stream(r, view, after),
        media_type=SSE_MEDIA_TYPE,
        headers={**STREAM_HEADERS, JOB_HEADER: view.job_id},
    )


async def _create(
    r: Relay, tenant: str, request: Request, body: _Request, job: dict[str, Any], *, chat: bool
) -> Response:
    submitted = await submit_drop_in(
        r,
        tenant,
        body.model,
        {**job, **body.job_fields()},
        PARAMS,
        via="openai.chat" if chat else "openai.completions",
        compat={"model": body.model, "include_usage": body.include_usage},
    )
    view = View(submitted.id, chat, body.model, submitted.created, body.include_usage)
    headers = {JOB_HEADER: submitted.id}
    if body.stream:
        return _streaming(r, view, ZERO_ID)
    if body.background:
        queued = {"status": "queued", "created_at": submitted.created_at}
        return JSONBody(completion_body(view, queued, ""), headers=headers)
    fields, text, _ = await finished(r, submitted.id, request)
    return JSONBody(completion_body(view, fields, text), headers=headers)


@router.post("/chat/completions", responses=CREATED, response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, r: RelayDep, tenant: TenantDep
) -> Response:
    """OpenAI's chat completions, as a job: SSE chunks with ``stream``, one
    ``chat.completion`` when it ends without, or at once (``status: queued``) with
    ``background``. Every response has ``X-Tokenrelay-Job``."""
    job = {"messages": body.messages, "tools": body.tools or []}
    return await _create(r, tenant, request, body, job, chat=True)


@router.post("/completions", responses=CREATED, response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, r: RelayDep, tenant: TenantDep
) -> Response:
    """OpenAI's (legacy) text completions, as a job; see ``POST /v1/chat/completions``."""
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return await _create(r, tenant, request, body, {"prompt": prompt}, chat=False)


async def _view(r: Relay, ref: str, tenant: str, *, chat: bool) -> tuple[View, dict[str, str], str]:
    fields, text = await load_job(r, ref, tenant)
    info = compat_info(fields)
    view = View(
        fields["id"],
        chat,
        requested_model(fields),
        unix_seconds(fields.get("created_at")),
        bool(info.get("include_usage")),
    )
    return view, fields, text


async def _retrieve(r: Relay, ref: str, tenant: str, *, chat: bool) -> JSONBody:
    view, fields, text = await _view(r, ref, tenant, chat=chat)
    return JSONBody(completion_body(view, fields, text), headers={JOB_HEADER: view.job_id})


async def _events(
    r: Relay,
    ref: str,
    tenant: str,
    after: str | None,
    last_event_id: str | None,
    include_usage: bool | None,
    *,
    chat: bool,
) -> StreamingResponse:
    view, _, _ = await _view(r, ref, tenant, chat=chat)
    if include_usage is not None:
        view = replace(view, include_usage=include_usage)
    start = await resume_point(r, view.job_id, after, last_event_id)
    return _streaming(r, view, start)


AfterQuery = Annotated[
    str | None, Query(description="resume after this event id; `now` for new events only")
]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
UsageQuery = Annotated[
    bool | None,
    Query(description="end with a usage chunk; default: what the creating request asked"),
]


@router.get("/chat/completions/{completion_id}", responses=RETRIEVED, response_model=None)
async def retrieve_chat_completion(completion_id: str, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """The job as a ``chat.completion`` now (``status`` says whether it ended); the id is the
    job's id or the ``chatcmpl-`` id made from it."""
    return await _retrieve(r, completion_id, tenant, chat=True)


@router.get("/completions/{completion_id}", responses=RETRIEVED, response_model=None)
async def retrieve_completion(completion_id: str, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """The job as a ``text_completion`` now."""
    return await _retrieve(r, completion_id, tenant, chat=False)


@router.get(
    "/chat/completions/{completion_id}/events",
    responses=FOLLOWED,
    response_class=StreamingResponse,
)
async def chat_completion_events(
    completion_id: str,
    r: RelayDep,
    tenant: TenantDep,
    after: AfterQuery = None,
    last_event_id: LastEventId = None,
    include_usage: UsageQuery = None,
) -> StreamingResponse:
    """Any job's events as OpenAI ``chat.completion.chunk`` SSE, replayed then live, from
    ``Last-Event-ID`` (or ``?after``) on; ends with ``data: [DONE]``."""
    return await _events(r, completion_id, tenant, after, last_event_id, include_usage, chat=True)


@router.get(
    "/completions/{completion_id}/events",
    responses=FOLLOWED,
    response_class=StreamingResponse,
)
async def completion_events(
    completion_id: str,
    r: RelayDep,
    tenant: TenantDep,
    after: AfterQuery = None,
    last_event_id: LastEventId = None,
    include_usage: UsageQuery = None,
) -> StreamingResponse:
    """Any job's events as OpenAI ``text_completion`` SSE chunks; see the chat variant."""
    return await _events(r, completion_id, tenant, after, last_event_id, include_usage, chat=False)


@router.get("/models", responses=LISTED, response_model=None)
async def list_models(r: RelayDep, _: TenantDep) -> JSONBody:
    """OpenAI's model list: each upstream's ``default_model``, named ``upstream/model``."""
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": upstream}
        for upstream, name in catalog(r.settings)
    ]
    return JSONBody({"object": "list", "data": data})
