"""Submitting a job from a validated ``JobRequest``: the rules and records of ``POST /v1/jobs``."""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import structlog
from redis.exceptions import RedisError

from api.admission import admit, prompt_chars
from api.errors import ApiError
from api.schemas import JobRequest
from api.state import Relay
from tokenrelay.errors import quoted
from tokenrelay.store.idempotency import Held, fingerprint
from tokenrelay.wire import JobRecord, now_rfc3339

log = structlog.get_logger("tokenrelay.api")

IDEMPOTENCY_WAIT_S = 2.0
"""How long a request waits for another request with its Idempotency-Key (and body) to finish
submitting, before it answers 409 with ``Retry-After``."""

T = TypeVar("T")
OnEnqueue = Callable[[Any], None]
"""Commands to add to the MULTI/EXEC that enqueues a job (``pipe`` in, nothing out)."""


@dataclass(frozen=True, slots=True)
class Submitted:
    """A job just enqueued."""

    id: str
    created_at: str  # RFC 3339, as stored
    upstream: str
    model: str | None


def new_job_id() -> str:
    """An unguessable job id: ``job_`` and 128 random bits, URL-safe."""
    return f"job_{secrets.token_urlsafe(16)}"


async def submit(
    r: Relay,
    tenant: str,
    body: JobRequest,
    *,
    via: str,
    extra_fields: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    on_enqueue: Callable[[Any], None] | None = None,
    wake: bool = True,
) -> Submitted:
    """Validate ``body`` against the configured upstreams and enqueue it, as ``POST /v1/jobs``.

    ``extra_fields`` are stored JSON-encoded in the job's status hash beside the standard ones
    (the worker ignores them); ``via`` names the route for the log. Raises ``ApiError``: 422 for
    an unknown upstream, a request the upstream's kind cannot take, a missing model, or a value
    JSON cannot carry (an integer beyond 64 bits); 413, 429 or 503
    from admission control (``api.admission``). Redis errors propagate (the API answers 503).
    The job is created and queued atomically: all or nothing; ``on_enqueue(pipe)`` adds commands
    to the queue Redis's MULTI/EXEC that enqueues it (``EventLog.submit``). ``wake=False``: the
    caller wakes the workers itself (``JobQueue.wake``), e.g. once its answer is written.
    """
    upstream_name = body.upstream or r.settings.resolved_default_upstream
    if upstream_name is None:
        raise ApiError(422, "name an upstream: none is the default", param="upstream")
    config = r.settings.upstreams.get(upstream_name)
    if config is None:
        raise ApiError(
            422,
            f"unknown upstream {quoted(upstream_name)}; configured: {sorted(r.settings.upstreams)}",
            param="upstream",
        )
    if config.kind == "sse" and body.messages is not None:
        raise ApiError(
            422, f"upstream {quoted(upstream_name)} takes a prompt, not messages", param="messages"
        )
    if config.kind == "sse" and body.tools:
        raise ApiError(422, f"upstream {quoted(upstream_name)} does not take tools", param="tools")
    model = body.model or config.default_model
    if model is None and config.kind != "sse":
        raise ApiError(422, f"upstream {quoted(upstream_name)} needs a model", param="model")
    await admit(r, tenant, prompt_chars(body.prompt, body.messages))

    request_json = body.model_dump(mode="json", exclude_none=True, exclude={"metadata", "upstream"})
    request_json["model"] = model
    job_id = job_id or new_job_id()
    record = JobRecord(
        id=job_id,
        status="queued",
        upstream=upstream_name,
        model=model,
        tenant=tenant,
        created_at=now_rfc3339(),
        request=request_json,
        metadata=body.metadata,
        extra=extra_fields or {},
    )
    try:
        fields = record.to_hash()
    except orjson.JSONEncodeError as exc:
        raise ApiError(422, f"the request holds a value that cannot be stored: {exc}") from None
    created_at = record.created_at
    await r.job_queue.submit(
        job_id, fields, ttl_s=r.settings.unfinished_ttl_s, on_enqueue=on_enqueue, wake=wake
    )
    log.info(
        "job_submitted", job_id=job_id, upstream=upstream_name, has_tools=bool(body.tools), via=via
    )
    return Submitted(job_id, created_at, upstream_name, model)


@dataclass(frozen=True, slots=True)
class Earlier:
    """The job an earlier request with the same Idempotency-Key and body submitted."""

    id: str
    status: str
    created_at: str


async def submit_once(
    r: Relay,
    tenant: str,
    idempotency_key: str | None,
    body: Any,
    start: Callable[[str, OnEnqueue | None], Awaitable[T]],
) -> T | Earlier:
    """Submit at most one job per ``idempotency_key`` (of ``tenant``) and request ``body`` (JSON
    data, fingerprinted): ``start(job_id, on_enqueue)`` submits it, adding ``on_enqueue`` (the
    key's confirm; None without a key) to the enqueue's MULTI/EXEC, and its result is returned.

    The same key and body again: the ``Earlier`` job, ``start`` not called. While the first
    request with the key is still submitting, another waits for it (up to
    ``IDEMPOTENCY_WAIT_S``), then is an ``ApiError`` 409 with ``Retry-After``. Another body
    with the key: 409. A value JSON cannot carry: 422.
    """
    job_id = new_job_id()
    if idempotency_key is None:
        return await start(job_id, None)
    try:
        body_hash = fingerprint(body)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits in a message
        raise ApiError(422, f"the request holds a value that cannot be stored: {exc}") from None
    store = r.idempotency
    key = store.key(tenant, idempotency_key)
    while held := await store.claim(key, job_id, body_hash, wait_s=IDEMPOTENCY_WAIT_S):
        if not secrets.compare_digest(held.body_hash, body_hash):
            raise ApiError(
                409, "this Idempotency-Key was used with another body", param="Idempotency-Key"
            )
        if held.pending:
            raise ApiError(
                409,
                "a request with this Idempotency-Key is still being submitted; retry shortly",
                param="Idempotency-Key",
                headers={"Retry-After": "1"},
            )
        status, created_at = await r.jobs.job_fields(held.job_id, "status", "created_at")
        if status is not None and created_at is not None:
            return Earlier(held.job_id, status, created_at)
        # The job is gone (expired, or lost with its Redis): the key names nothing. Free it.
        log.warning("idempotency_key_orphaned", job_id=held.job_id)
        await store.release(key, held)
    confirm = functools.partial(store.confirm, key=key, job_id=job_id, body_hash=body_hash)
    try:
        return await start(job_id, confirm)
    except BaseException:
        # Not enqueued (or, after a lost reply, maybe enqueued and confirmed): drop the claim
        # if it is still our pending one, so the key can be used again.
        with contextlib.suppress(RedisError):
            await store.release(key, Held(job_id, body_hash, pending=True))
        raise


def both(first: OnEnqueue | None, second: OnEnqueue | None) -> OnEnqueue | None:
    """One ``on_enqueue`` doing ``first`` then ``second`` (either may be None)."""
    if first is None or second is None:
        return first or second

    def run(pipe: Any) -> None:
        first(pipe)
        second(pipe)

    return run
