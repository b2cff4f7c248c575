"""The job routes: submit, get, follow the events of, and cancel a job."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from api.admission import admit, prompt_chars
from api.auth import tenant_of
from api.encoding import (
    KEEPALIVE,
    NDJSON_MEDIA_TYPE,
    SSE_MEDIA_TYPE,
    JSONBody,
    WireFormat,
    encode,
    wire_format,
)
from api.errors import ApiError
from api.schemas import ErrorBody, Job, JobCreated, JobRequest, UpstreamList
from api.state import Relay
from tokenrelay.errors import EventIdExpired, InvalidEventId, JobNotFound
from tokenrelay.events import (
    CANCEL_CHANNEL,
    TERMINAL_STATUSES,
    ZERO_ID,
    EventId,
    idempotency_key,
    job_key,
)
from tokenrelay.streams import StoredEvent

log = structlog.get_logger("tokenrelay.api")

router = APIRouter(prefix="/v1")

JOB_ID = re.compile(r"^job_[A-Za-z0-9_-]{22}$")
REPLAY_PAGE = 1000

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "malformed request or event id",
        401: "missing or wrong API key",
        404: "no such job",
        409: "Idempotency-Key reused with another body",
        410: "the event id is older than what is kept",
        413: "request body too large",
        422: "invalid job (schema, unknown upstream)",
        503: "the job store is unreachable",
    }.items()
}


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def relay(request: Request) -> Relay:
    state: Relay = request.app.state.relay
    return state


RelayDep = Annotated[Relay, Depends(relay)]
TenantDep = Annotated[str, Depends(tenant_of)]


def _created(job_id: str, status: str, created_at: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": status,
        "events_url": f"/v1/jobs/{job_id}/events",
        "created_at": created_at,
    }


@router.get("/upstreams", response_model=UpstreamList, responses={401: ERRORS[401]})
async def list_upstreams(r: RelayDep, _: TenantDep) -> JSONBody:
    """The configured model endpoints a job can name (never their URLs or keys)."""
    default = r.settings.resolved_default_upstream
    data = [
        {
            "name": name,
            "kind": cfg.kind,
            "default_model": cfg.default_model,
            "default": name == default,
        }
        for name, cfg in sorted(r.settings.upstreams.items())
    ]
    return JSONBody({"object": "list", "data": data})


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobCreated,
    responses={**ERRORS, 200: {"model": JobCreated, "description": "idempotent replay"}},
)
async def submit_job(
    body: JobRequest,
    r: RelayDep,
    tenant: TenantDep,
    idempotency_key_header: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JSONBody:
    """Enqueue a generation job. Its events stream at ``events_url``."""
    upstream_name = body.upstream or r.settings.resolved_default_upstream
    if upstream_name is None:
        raise ApiError(422, "name an upstream: none is the default", param="upstream")
    config = r.settings.upstreams.get(upstream_name)
    if config is None:
        raise ApiError(
            422,
            f"unknown upstream {upstream_name!r}; configured: {sorted(r.settings.upstreams)}",
            param="upstream",
        )
    if config.kind == "sse" and body.messages is not None:
        raise ApiError(
            422, f"upstream {upstream_name!r} takes a prompt, not messages", param="messages"
        )
    if config.kind == "sse" and body.tools:
        raise ApiError(422, f"upstream {upstream_name!r} does not take tools", param="tools")
    model = body.model or config.default_model
    if model is None and config.kind != "sse":
        raise ApiError(422, f"upstream {upstream_name!r} needs a model", param="model")
    await admit(r, tenant, prompt_chars(body.prompt, body.messages))

    request_json = body.model_dump(mode="json", exclude_none=True, exclude={"metadata", "upstream"})
    request_json["model"] = model
    job_id = f"job_{secrets.token_urlsafe(16)}"
    created_at = now_rfc3339()

    idem_key: str | None = None
    if idempotency_key_header is not None:
        canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        body_hash = hashlib.sha256(canonical).hexdigest()
        digest = hashlib.sha256(idempotency_key_header.encode()).hexdigest()
        idem_key = idempotency_key(tenant, digest)
        claimed = await r.redis.set(
            idem_key, f"{job_id} {body_hash}", nx=True, ex=r.settings.stream_ttl_s
        )
        if not claimed:
            return await _idempotent_replay(r, idem_key, body_hash, tenant)

    fields = {
        "id": job_id,
        "status": "queued",
        "upstream": upstream_name,
        "model": model or "",
        "created_at": created_at,
        "request": orjson.dumps(request_json).decode(),
        "metadata": orjson.dumps(body.metadata).decode(),
        "tenant": tenant,
        "attempt": "0",
        "nevents": "0",
    }
    try:
        await r.events.submit(job_id, fields, ttl_s=r.settings.unfinished_ttl_s)
    except BaseException:
        # The submit is atomic; only the idempotency claim could be left: release it.
        if idem_key is not None:
            with contextlib.suppress(RedisError):
                await r.redis.delete(idem_key)
        raise
    log.info("job_submitted", job_id=job_id, upstream=upstream_name, has_tools=bool(body.tools))
    return JSONBody(
        _created(job_id, "queued", created_at),
        status_code=202,
        headers={"Location": f"/v1/jobs/{job_id}"},
    )


async def _idempotent_replay(r: Relay, idem_key: str, body_hash: str, tenant: str) -> JSONBody:
    raw = await r.redis.get(idem_key)
    if raw is None:  # expired between SET NX and GET: vanishingly rare; the client may retry
        raise ApiError(409, "the Idempotency-Key is in use; retry", param="Idempotency-Key")
    job_id, _, stored_hash = raw.decode().partition(" ")
    if not secrets.compare_digest(stored_hash, body_hash):
        raise ApiError(
            409, "this Idempotency-Key was used with another body", param="Idempotency-Key"
        )
    found = await r.events.get_job(job_id)
    if found is None:  # the first request is still being enqueued
        return JSONBody(_created(job_id, "queued", now_rfc3339()), status_code=200)
    fields, _ = found
    return JSONBody(
        _created(job_id, fields["status"], fields["created_at"]),
        status_code=200,
        headers={"Location": f"/v1/jobs/{job_id}"},
    )


async def _load(r: Relay, job_id: str, tenant: str) -> tuple[dict[str, str], str]:
    """The job's fields and text; 404 when unknown, expired or another key's."""
    if not JOB_ID.match(job_id):
        raise JobNotFound(job_id)
    found = await r.events.get_job(job_id)
    if found is None or not secrets.compare_digest(found[0].get("tenant", ""), tenant):
        raise JobNotFound(job_id)
    return found


def _job_body(fields: dict[str, str], text: str) -> dict[str, Any]:
    def as_json(name: str, default: Any = None) -> Any:
        raw = fields.get(name)
        return orjson.loads(raw) if raw else default

    return {
        "id": fields["id"],
        "status": fields["status"],
        "upstream": fields["upstream"],
        "model": fields.get("model") or None,
        "text": text,
        "tool_calls": as_json("tool_calls", []),
        "finish_reason": fields.get("finish_reason"),
        "usage": as_json("usage"),
        "error": as_json("error"),
        "created_at": fields["created_at"],
        "started_at": fields.get("started_at"),
        "finished_at": fields.get("finished_at"),
        "last_event_id": fields.get("last_event_id"),
        "attempt": int(fields.get("attempt", "0")),
        "metadata": as_json("metadata", {}),
    }


@router.get("/jobs/{job_id}", response_model=Job, responses=ERRORS)
async def get_job(job_id: str, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """The job's status and everything streamed so far."""
    fields, text = await _load(r, job_id, tenant)
    return JSONBody(_job_body(fields, text))


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    responses={**ERRORS, 200: {"model": Job, "description": "the job had already finished"}},
)
async def cancel_job(job_id: str, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """Cancel a queued or running job; its stream ends with ``end`` ``cancelled``."""
    fields, text = await _load(r, job_id, tenant)
    if fields["status"] in TERMINAL_STATUSES:
        return JSONBody(_job_body(fields, text), status_code=200)
    if not await r.events.finish_queued(job_id, now_rfc3339(), {"finish_reason": "cancelled"}):
        # A worker has it: flag it (for a worker that is just starting it) and signal it.
        await r.redis.hset(job_key(job_id), "cancel_requested", "1")  # type: ignore[misc]
        await r.redis.publish(CANCEL_CHANNEL, job_id.encode())
    log.info("job_cancel_requested", job_id=job_id)
    fields, text = await _load(r, job_id, tenant)
    return JSONBody(_job_body(fields, text), status_code=202)


@router.get(
    "/jobs/{job_id}/events",
    responses={
        **ERRORS,
        200: {
            "description": "the job's events: replay, then live until ``end``",
            "content": {SSE_MEDIA_TYPE: {}, NDJSON_MEDIA_TYPE: {}},
        },
    },
    response_class=StreamingResponse,
)
async def job_events(
    job_id: str,
    r: RelayDep,
    tenant: TenantDep,
    after: Annotated[
        str | None,
        Query(description="resume after this event id; `now` for new events only"),
    ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Follow the job's events over SSE (or NDJSON by ``Accept``), resumable by event id."""
    await _load(r, job_id, tenant)
    param, raw = ("after", after) if after is not None else ("Last-Event-ID", last_event_id)
    if raw is None or raw == "":
        start = ZERO_ID
    elif raw == "now":
        start = await r.events.last_id(job_id)
    else:
        try:
            start = EventId.parse(raw)
        except ValueError:
            raise ApiError(400, f"malformed event id {raw!r}", param=param) from None
        try:
            await r.events.check_resume_point(job_id, start)
        except InvalidEventId as exc:
            raise ApiError(400, str(exc), param=param) from None
        except EventIdExpired as exc:
            raise ApiError(410, str(exc), param=param) from None
    fmt = wire_format(accept)
    return StreamingResponse(
        _follow(r, job_id, start, fmt),
        media_type=SSE_MEDIA_TYPE if fmt == "sse" else NDJSON_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _follow(r: Relay, job_id: str, after: EventId, fmt: WireFormat) -> AsyncIterator[bytes]:
    """Replay the events after ``after``, then tail live ones, until the ``end`` event."""
    last = after
    # Replay from Redis first, a page at a time.
    while True:
        page = await r.events.read(job_id, last, count=REPLAY_PAGE)
        if page:
            yield encode(page, fmt)
            last = EventId.parse(page[-1].id)
            if _has_end(page):
                return
        if len(page) < REPLAY_PAGE:
            break
    async with r.hub.subscribe(job_id, last) as sub:
        # Subscribed at `last`: anything appended from now on reaches us. If the job already
        # ended at or before `last` (a resume after `end`), nothing ever will: close now.
        status, end_id = await r.events.job_fields(job_id, "status", "last_event_id")
        if status is None:
            return
        if status in TERMINAL_STATUSES and end_id and EventId.parse(end_id) <= last:
            return
        render = functools.partial(encode, fmt=fmt)
        while True:
            batches = await sub.next(r.settings.keepalive_s)
            if batches is None:
                yield KEEPALIVE[fmt]
            elif batches:
                # One write a wake-up, however many batches; each batch encoded once for all.
                yield b"".join(batch.encoded(fmt, render) for batch in batches)
                if _has_end(batches[-1].events):
                    return


def _has_end(events: list[StoredEvent]) -> bool:
    return events[-1].type == "end"
