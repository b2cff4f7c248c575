"""OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, backed by jobs.

Each request becomes a job, rendered by ``render``; ``GET .../{id}/events`` with
``Last-Event-ID`` resumes its stream in the same format. The job runs to its end whether or
not the client stays connected.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.compat.jobs import (
    JOB_HEADER,
    LISTED,
    catalog,
    finished,
    load_record,
    responses,
    streaming,
    submit_drop_in_once,
    submit_responses,
)
from api.compat.openai.render import ChunkRenderer, OpenAIView, completion_body, models_body
from api.compat.openai.schemas import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from api.deps import IdempotencyKey, RelayDep, TenantDep
from api.encoding import SSE_MEDIA_TYPE, JSONBody
from api.reading import resume_point
from api.state import Relay
from tokenrelay.wire import ZERO_ID

router = APIRouter(prefix="/v1", tags=["openai-compatible"])

CREATED = submit_responses(
    "SSE chunks with `stream`; else the completion, or at once with `background`",
    ("application/json", SSE_MEDIA_TYPE),
    waiting="not streaming",
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

AfterQuery = Annotated[
    str | None, Query(description="resume after this event id; `now` for new events only")
]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
UsageQuery = Annotated[
    bool | None,
    Query(description="end with a usage chunk; default: what the creating request asked"),
]


async def _create(
    r: Relay,
    tenant: str,
    request: Request,
    body: OpenAIRequest,
    idempotency_key: str | None,
    *,
    chat: bool,
) -> Response:
    via = "openai.chat" if chat else "openai.completions"
    record, replayed = await submit_drop_in_once(
        r, tenant, body, via=via, idempotency_key=idempotency_key
    )
    view = OpenAIView.of(record, chat=chat)
    if body.stream:
        return streaming(r, record.id, ZERO_ID, ChunkRenderer(view), SSE_MEDIA_TYPE)
    text = ""
    if not body.background:  # else the answer is at once: the job as queued
        record, text = await finished(r, record.id, request)
    elif replayed:  # the job as it is now
        record, text = await load_record(r, record.id, tenant)
    return JSONBody(completion_body(view, record, text), headers={JOB_HEADER: record.id})


@router.post("/chat/completions", responses=CREATED, response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    r: RelayDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI's chat completions, as a job: SSE chunks with ``stream``, one
    ``chat.completion`` when it ends without, or at once (``status: queued``) with
    ``background``. Every response has ``X-Tokenrelay-Job``. An ``Idempotency-Key`` as for
    ``POST /v1/jobs``: the same key and body again follow the same job."""
    return await _create(r, tenant, request, body, idempotency_key, chat=True)


@router.post("/completions", responses=CREATED, response_model=None)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    r: RelayDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI's (legacy) text completions, as a job; see ``POST /v1/chat/completions``."""
    return await _create(r, tenant, request, body, idempotency_key, chat=False)


async def _retrieve(r: Relay, ref: str, tenant: str, *, chat: bool) -> JSONBody:
    record, text = await load_record(r, ref, tenant)
    view = OpenAIView.of(record, chat=chat)
    return JSONBody(completion_body(view, record, text), headers={JOB_HEADER: record.id})


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
    record, _ = await load_record(r, ref, tenant)
    view = OpenAIView.of(record, chat=chat)
    if include_usage is not None:
        view = replace(view, include_usage=include_usage)
    start = await resume_point(r, record.id, after, last_event_id)
    renderer = ChunkRenderer(view, resumed=start != ZERO_ID)
    return streaming(r, record.id, start, renderer, SSE_MEDIA_TYPE)


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
    return JSONBody(models_body(catalog(r.settings)))
