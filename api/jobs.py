"""The job routes: submit, get, follow the events of, and cancel a job."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api.cancellation import request_cancel
from api.deps import IdempotencyKey, RelayDep, TenantDep
from api.encoding import (
    KEEPALIVE,
    NDJSON_MEDIA_TYPE,
    SSE_MEDIA_TYPE,
    JSONBody,
    WireFormat,
    encode,
    wire_format,
)
from api.reading import follow, load_job, require_job, resume_point
from api.schemas import ErrorBody, Job, JobCreated, JobRequest, UpstreamList
from api.state import Relay
from api.submission import Earlier, OnEnqueue, Submitted, submit, submit_once
from tokenrelay.wire import EventId, JobRecord

log = structlog.get_logger("tokenrelay.api")

router = APIRouter(prefix="/v1")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "malformed request or event id",
        401: "missing or wrong API key",
        404: "no such job",
        409: "Idempotency-Key reused with another body, or still in use (retry)",
        410: "the event id is older than what is kept",
        413: "request body too large",
        422: "invalid job (schema, unknown upstream)",
        503: "the job store is unreachable",
    }.items()
}


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
    body: JobRequest, r: RelayDep, tenant: TenantDep, idempotency_key: IdempotencyKey = None
) -> JSONBody:
    """Enqueue a generation job. Its events stream at ``events_url``.

    With an ``Idempotency-Key``: the same key and body again answer 200 with the same job; while
    the first request with the key is still submitting, another waits for it (up to
    ``IDEMPOTENCY_WAIT_S``), then answers 409 with ``Retry-After``. Another body is a 409.
    """

    async def start(job_id: str, on_enqueue: OnEnqueue | None) -> Submitted:
        return await submit(
            r, tenant, body, via="jobs", job_id=job_id, on_enqueue=on_enqueue, wake=False
        )

    job = await submit_once(r, tenant, idempotency_key, body.model_dump(mode="json"), start)
    if isinstance(job, Earlier):
        return JSONBody(
            _created(job.id, job.status, job.created_at),
            status_code=200,
            headers={"Location": f"/v1/jobs/{job.id}"},
        )
    return _accepted(r, job)


def _accepted(r: Relay, job: Submitted) -> JSONBody:
    """202 for a job just enqueued; the workers are woken once the answer is written, so the
    one woken does not compete with the answer for the CPU (the POST's stages: README)."""
    return JSONBody(
        _created(job.id, "queued", job.created_at),
        status_code=202,
        headers={"Location": f"/v1/jobs/{job.id}"},
        background=BackgroundTask(r.job_queue.wake, job.id),
    )


def _job_body(fields: dict[str, str], text: str) -> dict[str, Any]:
    return JobRecord.from_hash(fields).to_json(text)


@router.get("/jobs/{job_id}", response_model=Job, responses=ERRORS)
async def get_job(job_id: str, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """The job's status and everything streamed so far."""
    fields, text = await load_job(r, job_id, tenant)
    return JSONBody(_job_body(fields, text))


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    responses={**ERRORS, 200: {"model": Job, "description": "the job had already finished"}},
)
async def cancel_job(job_id: str, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """Cancel a queued or running job; its stream ends with ``end`` ``cancelled``."""
    return await cancelled(r, job_id, tenant, via="jobs")


async def cancelled(r: Relay, ref: str, tenant: str, *, via: str) -> JSONBody:
    """Cancel job ``ref`` of ``tenant`` (``request_cancel``) and answer the job: 202, or 200
    when it had already ended. Raises ``JobNotFound`` (404) as ``load_job`` does."""
    fields, text = await load_job(r, ref, tenant)
    if not await request_cancel(r, fields["id"], fields["status"], via=via):
        return JSONBody(_job_body(fields, text), status_code=200)
    fields, text = await load_job(r, ref, tenant)
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
    await require_job(r, job_id, tenant)
    start = await resume_point(r, job_id, after, last_event_id)
    fmt = wire_format(accept)
    return StreamingResponse(
        _render_events(r, job_id, start, fmt),
        media_type=SSE_MEDIA_TYPE if fmt == "sse" else NDJSON_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _render_events(
    r: Relay, job_id: str, after: EventId, fmt: WireFormat
) -> AsyncIterator[bytes]:
    """The job's events after ``after`` on the wire, until the ``end`` event."""
    render = functools.partial(encode, fmt=fmt)
    async with contextlib.aclosing(follow(r, job_id, after)) as batches:
        async for got in batches:
            # One write a wake-up, however many batches; each batch encoded once for all.
            yield KEEPALIVE[fmt] if got is None else b"".join(b.encoded(fmt, render) for b in got)
