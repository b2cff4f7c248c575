"""What the OpenAI and Ollama drop-in routes share: model names, job lookup, following events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Request
from pydantic import Field, ValidationError

from api import reading
from api.errors import ApiError
from api.schemas import ErrorBody, JobRequest
from api.state import Relay
from api.submission import Submitted, submit
from tokenrelay.errors import clipped, quoted
from tokenrelay.settings import Settings
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import ZERO_ID, EventId

JOB_HEADER = "X-Tokenrelay-Job"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
COMPAT_FIELD = "compat"
"""Status-hash field with what a drop-in request asked for (the model as named, options of the
response format), so a later follower renders the job the same way. The worker ignores it."""


ModelName = Annotated[
    str,
    Field(min_length=1, max_length=512, description="`upstream/model`, or a default upstream's"),
]


def responses(
    ok: str, media_types: tuple[str, ...], errors: Mapping[int, str]
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route: 200 in ``media_types``, each error in the contract's
    shape (422 included, instead of FastAPI's own validation error shape)."""
    docs: dict[int | str, dict[str, Any]] = {
        200: {"description": ok, "content": {media: {} for media in media_types}}
    }
    common = {401: "missing or wrong API key", 422: "invalid request", 503: "Redis unreachable"}
    for status, text in {**common, **errors}.items():
        docs[status] = {"model": ErrorBody, "description": text}
    return docs


def split_model(settings: Settings, requested: str) -> tuple[str | None, str | None]:
    """``"upstream/model"`` -> ``(upstream, model)``; a name without ``/`` -> ``(None, name)``,
    for the default upstream. The model part may itself hold ``/`` and may be empty (the
    upstream's ``default_model``). Raises ``ApiError`` 422 when the prefix names no upstream."""
    prefix, slash, rest = requested.partition("/")
    if not slash:
        return None, requested
    if prefix not in settings.upstreams:
        raise ApiError(
            422,
            f"unknown upstream {quoted(prefix)} in model {quoted(requested)}; configured: "
            f"{sorted(settings.upstreams)} (write 'UPSTREAM/MODEL'; a model whose own name "
            "has a '/' needs its upstream named first)",
            param="model",
        )
    return prefix, rest or None


def catalog(settings: Settings) -> list[tuple[str, str]]:
    """``(upstream, "upstream/model")`` for every upstream with a ``default_model``."""
    return [
        (name, f"{name}/{config.default_model}")
        for name, config in sorted(settings.upstreams.items())
        if config.default_model
    ]


def job_request(fields: Mapping[str, Any], params: Mapping[str, str]) -> JobRequest:
    """A ``JobRequest`` from ``fields``; a validation error is a 422 naming the client's field
    (``params`` maps a ``JobRequest`` location such as ``options.max_tokens`` to it)."""
    try:
        return JobRequest.model_validate(dict(fields))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        param = clipped(params.get(loc, loc)) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ApiError(422, f"{param}: {message}" if param else message, param=param) from None


async def submit_drop_in(
    r: Relay,
    tenant: str,
    named: str,
    job: Mapping[str, Any],
    params: Mapping[str, str],
    *,
    via: str,
    compat: Mapping[str, Any],
) -> Submitted:
    """Submit ``job`` (``JobRequest`` fields) for the model the client ``named``, keeping
    ``compat`` (what the response format needs) in the job's ``COMPAT_FIELD``. Raises
    ``ApiError`` as ``split_model``, ``job_request`` and ``submission.submit`` do."""
    upstream, model = split_model(r.settings, named)
    fields = dict(job)
    if upstream is not None:
        fields["upstream"] = upstream
    if model is not None:
        fields["model"] = model
    body = job_request(fields, params)
    return await submit(r, tenant, body, via=via, extra_fields={COMPAT_FIELD: compat})


async def finished(
    r: Relay, job_id: str, request: Request
) -> tuple[dict[str, str], str, dict[str, Any] | None]:
    """The job's fields, text and ``usage`` event data once it ended (sooner if the client
    went away). Raises ``failure``'s ``ApiError`` when the job failed."""
    usage = await wait_for_end(r, job_id, request)
    found = await r.jobs.get_job(job_id)
    fields, text = found if found is not None else ({"status": "failed"}, "")
    if fields["status"] == "failed":
        raise failure(job_id, fields)
    return fields, text, usage


def unix_seconds(rfc3339: str | None) -> int:
    return int(parse_time(rfc3339).timestamp()) if rfc3339 else 0


def parse_time(rfc3339: str) -> datetime:
    return datetime.fromisoformat(rfc3339)


def compat_info(fields: Mapping[str, str]) -> dict[str, Any]:
    raw = fields.get(COMPAT_FIELD)
    info = orjson.loads(raw) if raw else {}
    return info if isinstance(info, dict) else {}


def requested_model(fields: Mapping[str, str]) -> str:
    """The model as the client named it, or ``upstream/model`` for a job made otherwise."""
    named = compat_info(fields).get("model")
    if isinstance(named, str):
        return named
    model = fields.get("model") or ""
    return f"{fields.get('upstream', '')}/{model}"


async def follow(
    r: Relay, job_id: str, after: EventId
) -> AsyncGenerator[list[StoredEvent] | None, None]:
    """``reading.follow``, its batches flattened into events: the drop-in formats render
    each event in a form of their own."""
    async with contextlib.aclosing(reading.follow(r, job_id, after)) as batches:
        async for got in batches:
            yield None if got is None else [event for batch in got for event in batch.events]


async def wait_for_end(r: Relay, job_id: str, request: Request) -> dict[str, Any] | None:
    """Wait until the job's ``end`` (or until the client goes away); return the data of its
    ``usage`` event, if it had one."""
    usage: dict[str, Any] | None = None
    async with contextlib.aclosing(follow(r, job_id, ZERO_ID)) as batches:
        async for batch in batches:
            if batch is None:
                if await request.is_disconnected():
                    return usage
                continue
            for event in batch:
                if event.type == "usage":
                    usage = event.json()
    return usage


def failure(job_id: str, fields: Mapping[str, str]) -> ApiError:
    """The HTTP error a non-streaming request answers for a failed job: 429 for an upstream
    rate limit, 422 for a request the upstream refused, 503 otherwise. ``x-should-retry``
    (which OpenAI's clients obey) says whether trying again could help."""
    raw = fields.get("error")
    error = orjson.loads(raw) if raw else {}
    type_ = str(error.get("type", "internal"))
    message = str(error.get("message", "the job failed"))
    status = error.get("status")
    if status == 429:
        code = 429
    elif type_ == "invalid_request" or (
        isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 408)
    ):
        code = 422
    else:
        code = 503
    headers = {JOB_HEADER: job_id, "x-should-retry": "true" if error.get("retryable") else "false"}
    return ApiError(code, f"the job failed ({type_}): {message}", headers=headers)
