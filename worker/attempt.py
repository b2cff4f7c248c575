"""A job's attempts at its upstream: retried while nothing was published, bounded by the job's
deadline, stopped by a cancel."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Mapping
from typing import Any

import structlog
from redis.exceptions import RedisError

from tokenrelay.errors import Fenced, StoreUnavailable, UpstreamError
from tokenrelay.settings import Settings
from tokenrelay.store.events import JobStream
from tokenrelay.store.leases import Leases
from tokenrelay.upstreams.base import GenerationRequest, Upstream
from tokenrelay.wire import JobError, StartEvent, UsageEvent
from worker.outcome import Outcome, Tally, usage_of
from worker.pump import flush_held, pump
from worker.retry import RetryPolicy
from worker.stops import StopFilter

log = structlog.get_logger("tokenrelay.worker")


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


class Cancelled(Exception):
    """The job was cancelled while a step of it ran."""


class JobControl:
    """A running job's cancel switch: a cancel aborts the step in flight (the upstream
    stream or a retry's pause) and every step after it."""

    def __init__(self) -> None:
        self.requested = False
        self._step: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        self.requested = True
        if self._step is not None:
            self._step.cancel()

    async def step(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as the job's step in flight. Raises ``Cancelled`` if a cancel of the
        job stopped it; ``CancelledError`` if the worker is stopping (this task cancelled)."""
        self._step = asyncio.create_task(coro)
        try:
            await self._step
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (task is not None and task.cancelling() > 0) or not self.requested:
                raise
            raise Cancelled from None


class Attempts:
    """Runs jobs' attempts for a worker process; holds what they share."""

    def __init__(
        self, settings: Settings, upstreams: Mapping[str, Upstream], leases: Leases
    ) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.leases = leases

    async def run(
        self,
        control: JobControl,
        stream: JobStream,
        start: StartEvent,
        raw: Mapping[str, Any],
        tally: Tally,
    ) -> Outcome:
        """Stream the job's answer from its upstream (``start`` is published already), then
        publish what the stop filter held back and the ``usage``. Returns how the job ends;
        raises the store's errors (``Fenced``, ``StoreUnavailable``, ``RedisError``) and
        ``CancelledError`` when the worker is stopping."""
        upstream = self.upstreams.get(start.upstream)
        config = self.settings.upstreams.get(start.upstream)
        if upstream is None or config is None:
            message = f"upstream {start.upstream!r} is not configured on this worker"
            return Outcome.failed(JobError("invalid_request", message, False))
        request = request_from_job(raw)
        stops = StopFilter(request.stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.job_timeout_s
        retry = RetryPolicy(config.max_attempts, self.settings.retry_budget_s, loop.time())
        while True:
            if control.requested:  # before the first attempt (asked at submit) or a retry
                return self._finish(stream, tally, stops, request, Outcome("cancelled"))
            log.info("upstream_stream_started")
            attempt = pump(
                upstream,
                config,
                request,
                upstream_name=start.upstream,
                stream=stream,
                stops=stops,
                tally=tally,
                leases=self.leases,
                max_events=self.settings.max_events_per_job,
            )
            try:
                async with asyncio.timeout_at(deadline):
                    await control.step(attempt)
            except UpstreamError as exc:
                error = _job_error(exc)
                delay = None if tally.published else retry.next_delay(exc, loop.time())
                if delay is None or loop.time() + delay >= deadline:
                    return self._finish(stream, tally, stops, request, Outcome.failed(error))
                log.info("upstream_retry", error_type=exc.error_type, delay_s=round(delay, 3))
                try:
                    await control.step(asyncio.sleep(delay))
                except Cancelled:
                    return self._finish(stream, tally, stops, request, Outcome("cancelled"))
                start = dataclasses.replace(start, attempt=start.attempt + 1, previous_error=error)
                stream.publish(start, fields={"attempt": str(start.attempt)})
                tally.restart()
                continue
            except (Fenced, StoreUnavailable, RedisError):
                raise  # the store failed, not the upstream: the job ends from the top
            except TimeoutError:
                message = f"job deadline of {self.settings.job_timeout_s:g} s passed"
                failed = Outcome.failed(JobError("upstream_timeout", message, False))
                return self._finish(stream, tally, stops, request, failed)
            except Cancelled:
                log.info("job_cancelled")
                return self._finish(stream, tally, stops, request, Outcome("cancelled"))
            except Exception as exc:
                # A bug of ours must not leave a stream without its end.
                log.error("job_internal_error", error=type(exc).__name__, exc_info=exc)
                failed = Outcome.failed(JobError("internal", "internal error in the worker", False))
                return self._finish(stream, tally, stops, request, failed)
            return self._finish(stream, tally, stops, request, Outcome(tally.finish_reason))

    @staticmethod
    def _finish(
        stream: JobStream,
        tally: Tally,
        stops: StopFilter,
        request: GenerationRequest,
        ending: Outcome,
    ) -> Outcome:
        """Publish what the stop filter held back and the ``usage``; the job's outcome."""
        flush_held(stream, tally, stops)
        if ending.finish_reason not in ("error", "cancelled"):
            ending = Outcome(tally.finish_reason)  # a stop may complete in the held-back text
        usage = usage_of(tally, request)
        if usage is None:
            return ending
        assert usage.source is not None
        stream.publish(
            UsageEvent(
                "",
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                usage.ttft_ms,
                usage.duration_ms,
                usage.source,
            )
        )
        return dataclasses.replace(ending, usage=usage)


def _job_error(exc: UpstreamError) -> JobError:
    return JobError(exc.error_type, exc.message, exc.retryable, getattr(exc, "status", None))
