"""The generate job: one attempt of a job, from claim to the one ``end`` event."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import structlog
from redis.exceptions import RedisError

from tokenrelay.errors import Fenced, StoreUnavailable, UpstreamError, UpstreamTimeout
from tokenrelay.metrics import record_job
from tokenrelay.resilience import retrying
from tokenrelay.settings import Settings, UpstreamConfig
from tokenrelay.store.events import EventWriter, JobStream
from tokenrelay.store.jobs import JobStore
from tokenrelay.store.leases import Leases
from tokenrelay.store.queue import JobQueue, Taken
from tokenrelay.upstreams import make_upstream
from tokenrelay.upstreams.base import (
    Finish,
    GenerationRequest,
    TextDelta,
    ToolCallDelta,
    Upstream,
    Usage,
)
from tokenrelay.wire import ErrorType, FinishReason, now_rfc3339, status_for
from worker.retry import RetryPolicy
from worker.stops import StopFilter

log = structlog.get_logger("tokenrelay.worker")

FINISH_REASONS: frozenset[str] = frozenset({"stop", "length", "tool_calls"})


def request_from_job(raw: Mapping[str, Any]) -> GenerationRequest:
    """The upstream request a job's stored ``request`` JSON asks for."""
    options = raw.get("options") or {}
    return GenerationRequest(
        model=raw.get("model"),
        messages=raw.get("messages"),
        prompt=raw.get("prompt"),
        temperature=options.get("temperature"),
        top_p=options.get("top_p"),
        max_tokens=options.get("max_tokens"),
        seed=options.get("seed"),
        stop=tuple(options.get("stop") or ()),
        tools=list(raw.get("tools") or []),
    )


def estimate_tokens(text: str) -> int:
    """About four characters a token: what usage says when the upstream sent none."""
    return math.ceil(len(text) / 4)


@dataclass
class _Outcome:
    finish_reason: FinishReason = "stop"
    error: dict[str, Any] | None = None
    usage: Usage | None = None
    usage_data: dict[str, Any] | None = None  # the usage event as published
    text_chunks: int = 0
    events: int = 0
    deltas: int = 0
    text_chars: int = 0
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Run:
    """One job's run, as far as it got: what its end depends on."""

    taken: Taken
    stream: JobStream | None = None
    upstream: str = ""
    ended: bool = False  # its end is stored (or it had nothing to run): release it


class JobRunner:
    """Runs generate jobs in a worker process; holds what they share."""

    def __init__(
        self,
        settings: Settings,
        records: JobStore,
        writer: EventWriter,
        jobs: JobQueue,
        worker_id: str,
    ) -> None:
        self.settings = settings
        self.records = records
        self.writer = writer
        self.jobs = jobs
        self.leases = Leases(jobs, self.active)
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            follow_redirects=False,
        )
        self.upstreams: dict[str, Upstream] = {
            name: make_upstream(self.client, config) for name, config in settings.upstreams.items()
        }
        self.worker_id = worker_id
        self._active: set[str] = set()
        self._cancel_requested: set[str] = set()
        self._pumps: dict[str, asyncio.Task[None]] = {}

    async def aclose(self) -> None:
        await self.client.aclose()

    def active(self) -> set[str]:
        """The jobs this process runs now (a copy)."""
        return set(self._active)

    def cancel(self, job_id: str) -> bool:
        """Abort the job's upstream request if it runs here; the job then ends ``cancelled``."""
        if job_id not in self._active:
            return False
        self._cancel_requested.add(job_id)
        pump = self._pumps.get(job_id)
        if pump is not None:
            pump.cancel()
        return True

    async def run(self, taken: Taken) -> None:
        """Run a job taken off the queue to its one ``end``, then release it (its lease and
        queue records), only once the end is stored. When the end cannot be stored (Redis
        failing past the retry budget), the lease is left to lapse and a reaper ends the job.
        Raises nothing but ``CancelledError`` (the worker stopping past its grace: the stream
        still ends with ``worker_lost`` if Redis takes it within two seconds)."""
        job_id = taken.job_id
        structlog.contextvars.bind_contextvars(job_id=job_id)
        # Registered before the claim, so a cancel that follows it always finds the job, and
        # its lease is renewed from the next round on.
        self._active.add(job_id)
        state = _Run(taken)
        try:
            await self._run(state)
        except asyncio.CancelledError:
            if state.stream is not None and not state.ended:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        lost = _lost_outcome("the worker stopped mid-job")
                        await self._end(state.stream, lost, state.upstream)
                        state.ended = True
            raise
        finally:
            self._active.discard(job_id)
            self._cancel_requested.discard(job_id)
            self._pumps.pop(job_id, None)
            self.writer.forget(job_id)
            if state.ended:
                await self._release(job_id)
            structlog.contextvars.unbind_contextvars("job_id", "upstream", "model", "attempt")

    async def _release(self, job_id: str) -> None:
        try:
            await retrying(
                lambda: self.jobs.finish(job_id),
                budget_s=self.settings.write_retry_s,
                what="finish",
            )
        except (RedisError, OSError) as exc:
            # The end is stored; the lease lapses and a reaper tidies the records away.
            log.warning("job_release_failed", error=type(exc).__name__)

    async def _run(self, state: _Run) -> None:
        job_id, owner = state.taken.job_id, state.taken.owner
        try:
            claimed = state.taken.claim
            if claimed is None:  # the streams live on another Redis: claim there
                claimed = await retrying(
                    lambda: self.records.claim(
                        job_id, owner, now_rfc3339(), safety_ttl_s=self.settings.unfinished_ttl_s
                    ),
                    budget_s=self.settings.write_retry_s,
                    what="claim",
                )
            if isinstance(claimed, str):
                log.info("job_skipped", status=claimed)
                # Ended or gone: tidy its queue records. Void: a reaper handed it back already.
                state.ended = claimed not in ("void", "running")
                return
            state.upstream = claimed.upstream
            structlog.contextvars.bind_contextvars(
                upstream=claimed.upstream, model=claimed.model, attempt=claimed.attempt
            )
            stream = self.writer.stream(
                job_id, owner, claimed.nevents, on_cancel=lambda: self._cancel_seen(job_id)
            )
            state.stream = stream
            start: dict[str, Any] = {
                "job_id": job_id,
                "upstream": claimed.upstream,
                "model": claimed.model,
                "attempt": claimed.attempt,
            }
            stream.publish("start", start)
            if claimed.cancel_requested:
                self._cancel_requested.add(job_id)
            outcome = await self._attempt(
                job_id, stream, claimed.upstream, claimed.request, dict(start)
            )
            await self._end(stream, outcome, claimed.upstream)
            state.ended = True
        except Fenced:
            # A reaper ended the job (this worker stalled past its lease) and released it.
            log.warning("job_fenced")
        except (StoreUnavailable, RedisError, OSError) as exc:
            log.error("job_store_failed", error=type(exc).__name__, cause=repr(exc.__cause__))
            message = "the event store kept failing; the job was stopped"
            state.ended = await self._fail(state, _error("store_unavailable", message, True))
        except Exception as exc:
            # A bug of ours must not leave a stream without its end.
            log.error("job_internal_error", error=type(exc).__name__, exc_info=exc)
            message = "internal error in the worker"
            state.ended = await self._fail(state, _error("internal", message, False))

    def _cancel_seen(self, job_id: str) -> None:
        if self.cancel(job_id):
            log.info("cancel_seen_in_write_reply")

    async def _fail(self, state: _Run, error: dict[str, Any]) -> bool:
        """End the job with ``error``, whatever its writer managed to store before; True when
        it is ended (by this or by a reaper), False when that too failed or it was never
        claimed: its lease then lapses and a reaper settles it."""
        job_id, owner = state.taken.job_id, state.taken.owner
        try:
            done = await retrying(
                lambda: self.records.fail(job_id, error, owner=owner),
                budget_s=self.settings.write_retry_s,
                what="fail",
            )
        except Exception as exc:  # Redis still failing (or a bug): the reaper ends it instead
            log.error("job_end_failed", error=type(exc).__name__)
            return False
        if done == 1:
            log.info("job_finished", finish_reason="error", error_type=error["type"])
            await self._record(state.upstream, "failed", _Outcome(), str(error["type"]))
        return done != 2

    async def _attempt(
        self,
        job_id: str,
        stream: JobStream,
        upstream_name: str,
        raw: Mapping[str, Any],
        start: dict[str, Any],
    ) -> _Outcome:
        """Stream from the upstream, retrying failures that came before anything was published."""
        outcome = _Outcome()
        upstream = self.upstreams.get(upstream_name)
        config = self.settings.upstreams.get(upstream_name)
        if upstream is None or config is None:
            outcome.finish_reason = "error"
            outcome.error = _error(
                "invalid_request",
                f"upstream {upstream_name!r} is not configured on this worker",
                False,
            )
            return outcome
        request = request_from_job(raw)
        stops = StopFilter(request.stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.job_timeout_s
        retry = RetryPolicy(
            max_attempts=config.max_attempts,
            budget_s=self.settings.retry_budget_s,
            started=loop.time(),
        )
        while True:
            if job_id in self._cancel_requested:
                outcome.finish_reason = "cancelled"
                break
            log.info("upstream_stream_started")
            pump = asyncio.create_task(
                self._pump(upstream, upstream_name, config, request, stream, stops, outcome)
            )
            self._pumps[job_id] = pump
            try:
                async with asyncio.timeout_at(deadline):
                    await pump
            except UpstreamError as exc:
                nothing_out = outcome.text_chunks == 0 and not outcome.tool_calls
                delay = retry.next_delay(exc, loop.time()) if nothing_out else None
                if delay is not None and loop.time() + delay < deadline:
                    log.info("upstream_retry", error_type=exc.error_type, delay_s=round(delay, 3))
                    if not await self._sleep(job_id, delay):
                        outcome.finish_reason = "cancelled"
                        break
                    start["attempt"] += 1
                    start["previous_error"] = _error(
                        exc.error_type, exc.message, exc.retryable, getattr(exc, "status", None)
                    )
                    stream.publish("start", start, fields={"attempt": str(start["attempt"])})
                    outcome.started = time.monotonic()
                    continue
                outcome.finish_reason = "error"
                outcome.error = _error(
                    exc.error_type, exc.message, exc.retryable, getattr(exc, "status", None)
                )
            except (Fenced, StoreUnavailable, RedisError):
                raise  # the store failed, not the upstream: the job ends from the top
            except TimeoutError:
                outcome.finish_reason = "error"
                outcome.error = _error(
                    "upstream_timeout",
                    f"job deadline of {self.settings.job_timeout_s:g} s passed",
                    False,
                )
            except asyncio.CancelledError:
                if self._stopping_under(job_id):
                    raise
                outcome.finish_reason = "cancelled"
                log.info("job_cancelled")
            except Exception as exc:
                # A bug of ours must not leave a stream without its end.
                log.error("job_internal_error", error=type(exc).__name__, exc_info=exc)
                outcome.finish_reason = "error"
                outcome.error = _error("internal", "internal error in the worker", False)
            break
        # What was held back is text after all, up to a stop sequence completed inside it.
        self._delta(stream, outcome, stops.flush())
        if stops.stopped and outcome.finish_reason not in ("error", "cancelled"):
            outcome.finish_reason = "stop"
        if outcome.usage is None and outcome.text_chunks:
            prompt_text = request.prompt or orjson.dumps(request.messages or []).decode()
            outcome.usage = Usage(estimate_tokens(prompt_text), outcome.text_chunks)
            outcome_source = "estimated"
        else:
            outcome_source = "upstream"
        if outcome.usage is not None:
            outcome.usage_data = self._usage_data(outcome, outcome_source)
            stream.publish("usage", outcome.usage_data)
        return outcome

    def _stopping_under(self, job_id: str) -> bool:
        """Whether a CancelledError means the worker is stopping (not a cancel of this job)."""
        task = asyncio.current_task()
        outer = task is not None and task.cancelling() > 0
        return outer or job_id not in self._cancel_requested

    async def _sleep(self, job_id: str, delay: float) -> bool:
        """Sleep before a retry; False if the job was cancelled meanwhile."""
        nap = asyncio.create_task(asyncio.sleep(delay))
        self._pumps[job_id] = nap
        try:
            await nap
        except asyncio.CancelledError:
            if self._stopping_under(job_id):
                raise
            return False
        return True

    async def _pump(
        self,
        upstream: Upstream,
        upstream_name: str,
        config: UpstreamConfig,
        request: GenerationRequest,
        stream: JobStream,
        stops: StopFilter,
        outcome: _Outcome,
    ) -> None:
        """Read the upstream into the stream until it ends, a stop sequence matches, or it goes
        silent: no first token within ``first_token_timeout_s``, or no token for
        ``idle_timeout_s`` (both ``UpstreamTimeout``)."""
        loop = asyncio.get_running_loop()
        if config.max_concurrency is not None:
            # Wait for a slot of the upstream's limit, shared by every worker process.
            await self.leases.acquire_slot(stream.job_id, upstream_name, config.max_concurrency)
        chunks = upstream.stream(request)
        waiting_first = True
        try:
            async with asyncio.timeout(config.first_token_s) as silence:
                async for chunk in chunks:
                    if isinstance(chunk, TextDelta):
                        if outcome.first_token is None:
                            outcome.first_token = time.monotonic()
                        outcome.text_chunks += 1
                        self._delta(stream, outcome, stops.feed(chunk.text))
                        if stops.stopped:
                            outcome.finish_reason = "stop"
                            return  # closing the iterator closes the upstream request
                    elif isinstance(chunk, ToolCallDelta):
                        self._tool_call(stream, outcome, chunk)
                    elif isinstance(chunk, Usage):
                        outcome.usage = chunk
                    elif isinstance(chunk, Finish):
                        reason = chunk.reason if chunk.reason in FINISH_REASONS else "stop"
                        outcome.finish_reason = reason  # type: ignore[assignment]
                    if isinstance(chunk, TextDelta | ToolCallDelta):
                        waiting_first = False
                        silence.reschedule(loop.time() + config.idle_s)
                        if outcome.events >= self.settings.max_events_per_job:
                            # Truncated by our limit, as by max_tokens: the answer is cut short.
                            outcome.finish_reason = "length"
                            log.warning("job_event_limit", events=outcome.events)
                            return
        except TimeoutError:
            if waiting_first:
                raise UpstreamTimeout(f"no first token within {config.first_token_s:g} s") from None
            raise UpstreamTimeout(f"no token for {config.idle_s:g} s", retryable=False) from None
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            await self.leases.release_slot(stream.job_id)

    def _delta(self, stream: JobStream, outcome: _Outcome, text: str) -> None:
        if not text:
            return
        stream.publish("delta", {"index": outcome.deltas, "text": text}, text=text)
        outcome.deltas += 1
        outcome.events += 1
        outcome.text_chars += len(text)

    def _tool_call(self, stream: JobStream, outcome: _Outcome, chunk: ToolCallDelta) -> None:
        call = outcome.tool_calls.setdefault(
            chunk.index,
            {"id": None, "type": "function", "function": {"name": None, "arguments": ""}},
        )
        if chunk.id:
            call["id"] = chunk.id
        if chunk.name:
            call["function"]["name"] = chunk.name
        call["function"]["arguments"] += chunk.arguments
        data: dict[str, Any] = {"index": chunk.index}
        if chunk.id:
            data["id"] = chunk.id
        if chunk.name:
            data["name"] = chunk.name
        data["arguments"] = chunk.arguments
        calls = [outcome.tool_calls[i] for i in sorted(outcome.tool_calls)]
        stream.publish("tool_call", data, fields={"tool_calls": orjson.dumps(calls).decode()})
        outcome.events += 1

    def _usage_data(self, outcome: _Outcome, source: str) -> dict[str, Any]:
        assert outcome.usage is not None
        now = time.monotonic()
        first = outcome.first_token
        return {
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "total_tokens": outcome.usage.total_tokens,
            "ttft_ms": None if first is None else round((first - outcome.started) * 1000, 1),
            "duration_ms": round((now - outcome.started) * 1000, 1),
            "source": source,
        }

    async def _end(self, stream: JobStream, outcome: _Outcome, upstream: str) -> None:
        """Publish ``error`` (if any) and the one ``end``, with the final status fields."""
        fields = {
            "status": status_for(outcome.finish_reason),
            "finish_reason": outcome.finish_reason,
            "finished_at": now_rfc3339(),
        }
        if outcome.error is not None:
            stream.publish(
                "error", outcome.error, fields={"error": orjson.dumps(outcome.error).decode()}
            )
        if outcome.usage_data is not None:
            fields["usage"] = orjson.dumps(outcome.usage_data).decode()
        # Bounded by the writer's retry budget; the margin only guards against a bug there.
        async with asyncio.timeout(self.settings.write_retry_s + 30):
            await stream.finish(
                {"finish_reason": outcome.finish_reason}, fields, self.settings.stream_ttl_s
            )
        duration = time.monotonic() - outcome.started
        error_type = None if outcome.error is None else str(outcome.error["type"])
        log.info(
            "job_finished",
            finish_reason=outcome.finish_reason,
            deltas=outcome.deltas,
            chars=outcome.text_chars,
            error_type=error_type,
            duration_ms=round(duration * 1000, 1),
        )
        await self._record(upstream, fields["status"], outcome, error_type)

    async def _record(
        self, upstream: str, status: str, outcome: _Outcome, error_type: str | None
    ) -> None:
        """Add the finished job to the shared metrics; never fails the job."""
        with contextlib.suppress(RedisError, OSError):
            async with self.jobs.redis.pipeline(transaction=False) as pipe:
                first = outcome.first_token
                record_job(
                    pipe,
                    status=status,
                    upstream=upstream,
                    ttft_s=None if first is None else first - outcome.started,
                    duration_s=time.monotonic() - outcome.started,
                    deltas=outcome.deltas,
                    error_type=error_type,
                )
                await pipe.execute()


def _error(
    type_: ErrorType, message: str, retryable: bool, status: int | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type_, "message": message, "retryable": retryable}
    if status is not None:
        data["status"] = status
    return data


def _lost_outcome(message: str = "the worker running this job stopped mid-stream") -> _Outcome:
    return _Outcome(finish_reason="error", error=_error("worker_lost", message, True))
