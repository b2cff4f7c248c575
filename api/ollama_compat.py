"""Ollama-compatible ``/api/chat``, ``/api/generate`` and ``/api/tags``, backed by tokenrelay jobs.

Each request becomes a job whose events are rendered as Ollama streams: NDJSON by default, one
object with ``"stream": false``. The ``X-Tokenrelay-Job`` header names the job, so a client
that drops can resume it at ``/v1/jobs/{id}/events``: the job runs on regardless.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.compat import (
    JOB_HEADER,
    STREAM_HEADERS,
    ModelName,
    catalog,
    finished,
    follow,
    parse_time,
    responses,
    split_model,
    submit_drop_in,
)
from api.deps import RelayDep, TenantDep
from api.encoding import NDJSON_MEDIA_TYPE, JSONBody
from api.schemas import Message
from api.state import Relay
from tokenrelay.wire import ZERO_ID

router = APIRouter(prefix="/api", tags=["ollama-compatible"])

DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "cancelled": "cancelled"}
"""tokenrelay's finish reason -> Ollama's ``done_reason``. Ollama reports "stop" after tool
calls; its ``done_reason`` is an open string (it also sends "load", "unload"), so a cancelled
job says "cancelled". An ``error`` end sends an ``{"error": ...}`` line and no ``done``."""

PARAMS = {
    "options.max_tokens": "options.num_predict",
    **{f"options.{name}": f"options.{name}" for name in ("temperature", "top_p", "stop", "seed")},
}
EPOCH = "1970-01-01T00:00:00Z"
CREATED = responses(
    'NDJSON objects, the last with `"done": true`; one object with `"stream": false`',
    (NDJSON_MEDIA_TYPE, "application/json"),
    {
        400: "malformed request",
        413: "request body or prompt too large",
        422: "invalid request, unknown upstream, or a job the upstream refused",
        429: "this key's rate limit, or the upstream's (\"stream\": false)",
        503: 'the queue is full, Redis is unreachable, or the job failed ("stream": false)',
    },
)
LISTED = responses("each upstream's default model", ("application/json",), {})


# --- requests -----------------------------------------------------------------------------------


class Options(BaseModel):
    """The model options tokenrelay maps; others (``num_ctx``, ``top_k``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    temperature: float | None = None
    top_p: float | None = None
    num_predict: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class _Request(BaseModel):
    """What both endpoints take. Other fields (``keep_alive``, ``think``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName
    stream: bool | None = True
    options: Options | None = None
    format: Any = None

    @field_validator("format")
    @classmethod
    def _no_format(cls, value: Any) -> Any:
        if value:
            raise ValueError("structured output ('format') is not supported")
        return value

    def job_fields(self) -> dict[str, Any]:
        o = self.options or Options()
        max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
        options = {
            "temperature": o.temperature,
            "top_p": o.top_p,
            "max_tokens": max_tokens,  # Ollama's -1 (no limit) and -2 (fill the context): none
            "stop": o.stop,
            "seed": o.seed,
        }
        return {"options": {k: v for k, v in options.items() if v is not None}}


class ChatRequest(_Request):
    messages: list[Message] = Field(default_factory=list, max_length=10_000)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)


class GenerateRequest(_Request):
    prompt: str | None = None


# --- rendering ----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class View:
    """How one job is shown in Ollama's format."""

    model: str  # as the client named it
    chat: bool

    def obj(self, text: str, **fields: Any) -> dict[str, Any]:
        content: dict[str, Any] = (
            {"message": {"role": "assistant", "content": text}} if self.chat else {"response": text}
        )
        return {"model": self.model, "created_at": _now(), **content, **fields}

    def line(self, text: str, **fields: Any) -> bytes:
        return orjson.dumps(self.obj(text, **fields)) + b"\n"


def ollama_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style calls (``arguments`` a JSON string) as Ollama's (``arguments`` an object;
    arguments that are not a JSON object come as ``{"_raw": "..."}``)."""
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        raw = function.get("arguments") or "{}"
        try:
            arguments = orjson.loads(raw)
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            arguments = {"_raw": raw}
        item: dict[str, Any] = {
            "function": {"index": index, "name": function.get("name") or "", "arguments": arguments}
        }
        if call.get("id"):
            item = {"id": call["id"], **item}
        out.append(item)
    return out


def _ns(ms: float) -> int:
    return max(0, round(ms * 1_000_000))


def timings(fields: Mapping[str, str | None], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ollama's counts and durations (ns) from the job's times and its ``usage`` event:
    ``load_duration`` is the wait before a worker took the job, ``prompt_eval_duration`` the
    time to the first token, ``eval_duration`` the rest of the upstream stream,
    ``total_duration`` submit to end."""
    created = fields.get("created_at")
    started = fields.get("started_at") or created
    finished = fields.get("finished_at")
    usage = usage or {}
    ttft_ms = usage.get("ttft_ms") or 0.0
    duration_ms = usage.get("duration_ms") or 0.0
    load = total = 0
    if created and started:
        load = _ns((parse_time(started) - parse_time(created)).total_seconds() * 1000)
    if created and finished:
        total = _ns((parse_time(finished) - parse_time(created)).total_seconds() * 1000)
    return {
        "total_duration": max(total, load + _ns(duration_ms)),
        "load_duration": load,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        "prompt_eval_duration": _ns(ttft_ms),
        "eval_count": int(usage.get("completion_tokens") or 0),
        "eval_duration": _ns(duration_ms - ttft_ms),
    }


async def _job_times(r: Relay, job_id: str) -> dict[str, str | None]:
    names = ("created_at", "started_at", "finished_at")
    return dict(zip(names, await r.jobs.job_fields(job_id, *names), strict=True))


async def _stream(r: Relay, job_id: str, view: View) -> AsyncIterator[bytes]:
    calls: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    async with contextlib.aclosing(follow(r, job_id, ZERO_ID)) as batches:
        async for batch in batches:
            if batch is None:  # keep-alive: an empty fragment, which every Ollama client takes
                yield view.line("", done=False)
                continue
            out: list[bytes] = []
            for event in batch:
                data = event.json()
                if event.type == "delta":
                    out.append(view.line(data["text"], done=False))
                elif event.type == "tool_call":
                    call = calls.setdefault(
                        data["index"], {"id": None, "function": {"name": None, "arguments": ""}}
                    )
                    call["id"] = call["id"] or data.get("id")
                    call["function"]["name"] = call["function"]["name"] or data.get("name")
                    call["function"]["arguments"] += data.get("arguments", "")
                elif event.type == "usage":
                    usage = data
                elif event.type == "error":
                    error = f"{data.get('type', 'internal')}: {data.get('message', '')}"
                    out.append(orjson.dumps({"error": error}) + b"\n")
                elif event.type == "end" and data["finish_reason"] != "error":
                    if calls and view.chat:
                        tool_calls = ollama_tool_calls([calls[i] for i in sorted(calls)])
                        calls_obj = view.obj("", done=False)
                        calls_obj["message"]["tool_calls"] = tool_calls
                        out.append(orjson.dumps(calls_obj) + b"\n")
                    reason = DONE_REASONS.get(data["finish_reason"], "stop")
                    final = timings(await _job_times(r, job_id), usage)
                    out.append(view.line("", done=True, done_reason=reason, **final))
            if out:
                yield b"".join(out)


# --- routes -------------------------------------------------------------------------------------


def _loaded(view: View, stream: bool) -> Response:
    """Ollama's answer to a request with nothing to generate: the model is "loaded"."""
    obj = view.obj("", done=True, done_reason="load")
    if stream:
        return Response(orjson.dumps(obj) + b"\n", media_type=NDJSON_MEDIA_TYPE)
    return JSONBody(obj)


async def _create(
    r: Relay, tenant: str, request: Request, body: _Request, job: dict[str, Any], view: View
) -> Response:
    submitted = await submit_drop_in(
        r,
        tenant,
        body.model,
        {**job, **body.job_fields()},
        PARAMS,
        via="ollama.chat" if view.chat else "ollama.generate",
        compat={"model": body.model},
    )
    job_id = submitted.id
    if body.stream is not False:
        return StreamingResponse(
            _stream(r, job_id, view),
            media_type=NDJSON_MEDIA_TYPE,
            headers={**STREAM_HEADERS, JOB_HEADER: job_id},
        )
    fields, text, usage = await finished(r, job_id, request)
    reason = DONE_REASONS.get(fields.get("finish_reason") or "stop", "stop")
    obj = view.obj(text, done=True, done_reason=reason, **timings(fields, usage))
    calls = orjson.loads(fields.get("tool_calls") or "[]")
    if view.chat and calls:
        obj["message"]["tool_calls"] = ollama_tool_calls(calls)
    return JSONBody(obj, headers={JOB_HEADER: job_id})


@router.post("/chat", responses=CREATED, response_model=None)
async def chat(body: ChatRequest, request: Request, r: RelayDep, tenant: TenantDep) -> Response:
    """Ollama's chat, as a job: NDJSON unless ``"stream": false``; the last object has
    ``done: true``, ``done_reason``, counts and durations. ``X-Tokenrelay-Job`` names the job."""
    view = View(body.model, chat=True)
    if not body.messages:
        split_model(r.settings, body.model)
        return _loaded(view, body.stream is not False)
    job = {"messages": body.messages, "tools": body.tools or []}
    return await _create(r, tenant, request, body, job, view)


@router.post("/generate", responses=CREATED, response_model=None)
async def generate(
    body: GenerateRequest, request: Request, r: RelayDep, tenant: TenantDep
) -> Response:
    """Ollama's generate (a prompt), as a job; see ``POST /api/chat``."""
    view = View(body.model, chat=False)
    if not body.prompt:
        split_model(r.settings, body.model)
        return _loaded(view, body.stream is not False)
    return await _create(r, tenant, request, body, {"prompt": body.prompt}, view)


@router.get("/tags", responses=LISTED, response_model=None)
async def tags(r: RelayDep, _: TenantDep) -> JSONBody:
    """Ollama's model list: each upstream's ``default_model``, named ``upstream/model``."""
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": EPOCH,
            "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "",
                "family": upstream,
                "families": [upstream],
                "parameter_size": "",
                "quantization_level": "",
            },
        }
        for upstream, name in catalog(r.settings)
    ]
    return JSONBody({"models": models})
