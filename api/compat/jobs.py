"""What every drop-in protocol's routes share: a job submitted from a protocol request, its events
followed and rendered as a stream, its end awaited, a failed job's HTTP error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import structlog
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from api import reading
from api.cancellation import request_cancel
from api.compat.base import COMPAT_FIELD, DropInRequest, Renderer
from api.errors import ApiError
from api.schemas import ErrorBody, JobRequest
from api.state import Relay
from api.submission import Earlier, OnEnqueue, both, submit, submit_once
from tokenrelay.errors import clipped, quoted
from tokenrelay.settings import Settings
from tokenrelay.wire import ZERO_ID, EventId, JobRecord

log = structlog.get_logger("tokenrelay.api")

JOB_HEADER = "X-Tokenrelay-Job"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ENDED_FIELDS = (
    "id", "status", "upstream", "model", "tenant", "created_at", "attempt", "started_at",
    "finished_at", "finish_reason", "usage", "error", "last_event_id",
)  # fmt: skip
"""The record fields a stream's end is rendered with: all but the request and tool calls."""


# --- OpenAPI ------------------------------------------------------------------------------------


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


def submit_responses(
    ok: str, media_types: tuple[str, ...], *, waiting: str
) -> dict[int | str, dict[str, Any]]:
    """``responses`` of a route that submits a job; ``waiting`` says when it waits for the end
    (then a failed job is an HTTP error)."""
    return responses(
        ok,
        media_types,
        {
            400: "malformed request",
            409: "Idempotency-Key reused with another body, or still in use (retry)",
            413: "request body or prompt too large",
            422: "invalid request, unknown upstream, or a job the upstream refused",
            429: f"this key's rate limit, or the upstream's ({waiting})",
            503: f"the queue is full, Redis is unreachable, or the job failed upstream ({waiting})",
        },
    )


LISTED = responses("each upstream's default model", ("application/json",), {})


# --- models -------------------------------------------------------------------------------------


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


# --- submitting ---------------------------------------------------------------------------------


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
    body: DropInRequest,
    *,
    via: str,
    job_id: str | None = None,
    on_enqueue: Callable[[Any], None] | None = None,
) -> JobRecord:
    """Submit the job ``body`` asks for, as ``POST /v1/jobs`` would, for the model the client
    named; the record keeps ``body.compat()``; ``via`` names the route for the log; ``job_id``
    and ``on_enqueue`` as ``submission.submit`` takes them. Returns the queued job's record.
    Raises ``ApiError`` as ``split_model``, ``job_request`` and ``submission.submit`` do."""
    upstream, model = split_model(r.settings, body.model)
    fields = {**body.job_input(), **body.job_fields()}
    if upstream is not None:
        fields["upstream"] = upstream
    if model is not None:
        fields["model"] = model
    compat = body.compat()
    submitted = await submit(
        r,
        tenant,
        job_request(fields, body.job_params),
        via=via,
        extra_fields={COMPAT_FIELD: compat},
        job_id=job_id,
        on_enqueue=on_enqueue,
    )
    return JobRecord(
        submitted.id,
        "queued",
        submitted.upstream,
        submitted.model,
        tenant,
        submitted.created_at,
        extra={COMPAT_FIELD: compat},
    )


async def submit_drop_in_once(
    r: Relay,
    tenant: str,
    body: DropInRequest,
    *,
    via: str,
    idempotency_key: str | None,
    request_json: Any = None,
    on_enqueue: Callable[[str], OnEnqueue] | None = None,
) -> tuple[JobRecord, bool]:
    """``submit_drop_in`` at most once per ``Idempotency-Key`` and request, as ``POST /v1/jobs``
    (``submission.submit_once``): the record of the job, and whether an earlier request with
    the same key and body submitted it (then nothing is submitted; the record is read now).
    ``request_json`` is what the key is bound to (default: ``body`` as JSON), with the route
    (``via``); ``on_enqueue(job_id)`` adds commands to the enqueue's MULTI/EXEC."""

    async def start(job_id: str, confirm: OnEnqueue | None) -> JobRecord:
        mine = None if on_enqueue is None else on_enqueue(job_id)
        return await submit_drop_in(
            r, tenant, body, via=via, job_id=job_id, on_enqueue=both(mine, confirm)
        )

    raw = body.model_dump(mode="json") if request_json is None else request_json
    got = await submit_once(r, tenant, idempotency_key, {"route": via, "request": raw}, start)
    if isinstance(got, Earlier):
        record, _ = await load_record(r, got.id, tenant)
        return record, True
    return got, False


async def load_record(r: Relay, ref: str, tenant: str) -> tuple[JobRecord, str]:
    """The record and text of job ``ref`` (as ``reading.load_job``: a job id, or an OpenAI id
    made from one). Raises ``JobNotFound`` (404) when unknown, expired or another key's."""
    fields, text = await reading.load_job(r, ref, tenant)
    return JobRecord.from_hash(fields, extra=(COMPAT_FIELD,)), text


# --- following ----------------------------------------------------------------------------------


async def ended_record(r: Relay, job_id: str) -> JobRecord | None:
    """The record of a job that has just ended (``ENDED_FIELDS``); None if it is gone."""
    values = await r.jobs.job_fields(job_id, *ENDED_FIELDS)
    fields = {name: value for name, value in zip(ENDED_FIELDS, values, strict=True) if value}
    return JobRecord.from_hash(fields) if "status" in fields else None


async def rendered(
    r: Relay, job_id: str, after: EventId, renderer: Renderer
) -> AsyncGenerator[bytes, None]:
    """The job's events after ``after``, replayed then live, through ``renderer``: its
    keep-alive after ``keepalive_s`` of silence, the record with the batch that ends the job."""
    # The drop-in formats render each event in a form of their own: batches flattened.
    async with contextlib.aclosing(reading.follow(r, job_id, after)) as batches:
        async for got in batches:
            if got is None:
                yield renderer.keepalive()
                continue
            events = list(reading.events_of(got))
            record = await ended_record(r, job_id) if events[-1].type == "end" else None
            if out := renderer.render(events, record):
                yield out
    if tail := renderer.close():
        yield tail


def streaming(
    r: Relay, job_id: str, after: EventId, renderer: Renderer, media_type: str
) -> StreamingResponse:
    """The response streaming ``rendered``, naming the job in ``X-Tokenrelay-Job``."""
    return StreamingResponse(
        rendered(r, job_id, after, renderer),
        media_type=media_type,
        headers={**STREAM_HEADERS, JOB_HEADER: job_id},
    )


# --- waiting ------------------------------------------------------------------------------------


async def finished(r: Relay, job_id: str, request: Request) -> tuple[JobRecord, str]:
    """The job's record and text once it ended (sooner if the client went away). Raises
    ``failure``'s ``ApiError`` when the job failed or is gone."""
    await wait_for_end(r, job_id, request)
    found = await r.jobs.get_job(job_id)
    if found is None:
        raise failure(job_id, None)
    fields, text = found
    record = JobRecord.from_hash(fields, extra=(COMPAT_FIELD,))
    if record.status == "failed":
        raise failure(job_id, record)
    return record, text


async def wait_for_end(r: Relay, job_id: str, request: Request) -> None:
    """Wait until the job's ``end`` (or until the client goes away)."""
    async with contextlib.aclosing(reading.follow(r, job_id, ZERO_ID)) as batches:
        async for got in batches:
            if got is None and await request.is_disconnected():
                return


async def cancel(r: Relay, record: JobRecord, request: Request, *, wait_s: float, via: str) -> bool:
    """Cancel the job of ``record`` (``cancellation.request_cancel``), then wait up to
    ``wait_s`` for its end. False if it had already ended."""
    if not await request_cancel(r, record.id, record.status, via=via):
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            await wait_for_end(r, record.id, request)
    return True


def failure(job_id: str, record: JobRecord | None) -> ApiError:
    """The HTTP error a non-streaming request answers for a failed (or vanished) job: 429 for
    an upstream rate limit, 422 for a request the upstream refused, 503 otherwise.
    ``x-should-retry`` (which OpenAI's clients obey) says whether trying again could help."""
    error = None if record is None else record.error
    type_ = "internal" if error is None else error.type
    message = "the job failed" if error is None else error.message
    status = None if error is None else error.status
    if status == 429:
        code = 429
    elif type_ == "invalid_request" or (
        status is not None and 400 <= status < 500 and status not in (401, 403, 408)
    ):
        code = 422
    else:
        code = 503
    retry = "true" if error is not None and error.retryable else "false"
    headers = {JOB_HEADER: job_id, "x-should-retry": retry}
    return ApiError(code, f"the job failed ({type_}): {message}", headers=headers)
