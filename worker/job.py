"""The generate job: a job taken off the queue, from its claim to its one ``end`` event."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenrelay.errors import Fenced, StoreUnavailable
from tokenrelay.resilience import retrying
from tokenrelay.settings import Settings
from tokenrelay.store.control import Control
from tokenrelay.store.events import EventWriter, JobStream
from tokenrelay.store.jobs import JobStore
from tokenrelay.store.leases import Leases
from tokenrelay.store.queue import JobQueue, Taken
from tokenrelay.upstreams import make_upstream
from tokenrelay.upstreams.base import Upstream
from tokenrelay.upstreams.transport import new_client
from tokenrelay.wire import EndEvent, ErrorEvent, JobError, StartEvent, now_rfc3339, status_for
from worker.attempt import Attempts, JobControl
from worker.outcome import Outcome, Tally, worker_lost

log = structlog.get_logger("tokenrelay.worker")


@dataclass
class _Run:
    """One job's run, as far as it got: what its end depends on."""

    taken: Taken
    control: JobControl = field(default_factory=JobControl)
    stream: JobStream | None = None
    upstream: str = ""
    tally: Tally = field(default_factory=Tally)
    ended: bool = False  # its end is stored (or it had nothing to run): release it


class JobRunner:
    """Runs generate jobs in a worker process; holds what they share."""

    def __init__(
        self,
        settings: Settings,
        records: JobStore,
        writer: EventWriter,
        jobs: JobQueue,
        control: Control,
        worker_id: str,
        lease_redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.records = records
        self.writer = writer
        self.jobs = jobs
        self.control = control
        self.leases = Leases(jobs, self.active, lease_redis)
        # httpx on aiohttp's transport: the upstream read costs a fraction of httpcore's.
        self.client = new_client()
        self.upstreams: dict[str, Upstream] = {
            name: make_upstream(self.client, config) for name, config in settings.upstreams.items()
        }
        self.attempts = Attempts(settings, self.upstreams, self.leases)
        self.worker_id = worker_id
        self._running: dict[str, JobControl] = {}
        self._held: set[str] = set()  # leased by this process: from the take to the release

    async def aclose(self) -> None:
        await self.client.aclose()

    def active(self) -> set[str]:
        """The jobs this process holds a lease on (a copy): each from its take until its
        records are released, not only while it runs, so a release slowed by a busy Redis
        never leaves a lease to lapse under a job that is still being settled."""
        return set(self._held)

    def cancel(self, job_id: str) -> bool:
        """Abort the job's upstream request if it runs here; the job then ends ``cancelled``."""
        control = self._running.get(job_id)
        if control is None:
            return False
        control.cancel()
        return True

    async def run(self, taken: Taken) -> None:
        """Run a job taken off the queue to its one ``end``, then release it (its lease and
        queue records), only once the end is stored. When the end cannot be stored (Redis
        failing past the retry budget), the lease is left to lapse and a reaper ends the job.
        Raises nothing but ``CancelledError`` (the worker stopping past its grace: the stream
        still ends with ``worker_lost`` if Redis takes it within two seconds)."""
        job_id = taken.job_id
        structlog.contextvars.bind_contextvars(job_id=job_id)
        state = _Run(taken)
        # Registered before the claim, so a cancel that follows it always finds the job, and
        # its lease is renewed from the next round on.
        self._held.add(job_id)
        self._running[job_id] = state.control
        try:
            await self._run(state)
        except asyncio.CancelledError:
            if state.stream is not None and not state.ended:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        lost = worker_lost("the worker stopped mid-job")
                        await self._end(state, lost)
                        state.ended = True
            raise
        finally:
            self._running.pop(job_id, None)
            self.writer.forget(job_id)
            try:
                if state.ended:
                    await self._release(job_id)
            finally:
                self._held.discard(job_id)
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
            if claimed == "cancelling":
                # Cancelled while queued, its end staged but not yet published (durability
                # ``replicated``: the canceller's publish was lost or never came): publish it.
                ended = await retrying(
                    lambda: self.records.finish_queued(
                        job_id, now_rfc3339(), {"finish_reason": "cancelled"}
                    ),
                    budget_s=self.settings.write_retry_s,
                    what="cancel",
                )
                log.info("job_cancel_finished", ended=ended)
                state.ended = True
                return
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
            start = StartEvent("", job_id, claimed.upstream, claimed.model, claimed.attempt)
            stream.publish(start)
            if claimed.cancel_requested:
                state.control.requested = True
            state.tally = Tally()
            outcome = await self.attempts.run(
                state.control, stream, start, claimed.request, state.tally
            )
            await self._end(state, outcome)
            state.ended = True
        except Fenced:
            # A reaper ended the job (this worker stalled past its lease) and released it.
            log.warning("job_fenced")
        except (StoreUnavailable, RedisError, OSError) as exc:
            log.error("job_store_failed", error=type(exc).__name__, cause=repr(exc.__cause__))
            message = "the event store kept failing; the job was stopped"
            state.ended = await self._fail(state, JobError("store_unavailable", message, True))
        except Exception as exc:
            # A bug of ours must not leave a stream without its end.
            log.error("job_internal_error", error=type(exc).__name__, exc_info=exc)
            message = "internal error in the worker"
            state.ended = await self._fail(state, JobError("internal", message, False))

    def _cancel_seen(self, job_id: str) -> None:
        if self.cancel(job_id):
            log.info("cancel_seen_in_write_reply")

    async def _fail(self, state: _Run, error: JobError) -> bool:
        """End the job with ``error``, whatever its writer managed to store before; True when
        it is ended (by this or by a reaper), False when that too failed or it was never
        claimed: its lease then lapses and a reaper settles it."""
        job_id, owner = state.taken.job_id, state.taken.owner
        try:
            done = await retrying(
                lambda: self.records.fail(job_id, error.data(), owner=owner),
                budget_s=self.settings.write_retry_s,
                what="fail",
            )
        except Exception as exc:  # Redis still failing (or a bug): the reaper ends it instead
            log.error("job_end_failed", error=type(exc).__name__)
            return False
        if done == 1:
            log.info("job_finished", finish_reason="error", error_type=error.type)
            await self._record(state.upstream, "failed", Tally(), error.type)
        return done != 2

    async def _end(self, state: _Run, outcome: Outcome) -> None:
        """Publish ``error`` (if any) and the one ``end``, with the final status fields."""
        assert state.stream is not None
        stream, tally = state.stream, state.tally
        fields = {
            "status": status_for(outcome.finish_reason),
            "finish_reason": outcome.finish_reason,
            "finished_at": now_rfc3339(),
        }
        error = outcome.error
        if error is not None:
            event = ErrorEvent("", error.type, error.message, error.retryable, error.status)
            stream.publish(event, fields={"error": orjson.dumps(error.data()).decode()})
        if outcome.usage is not None:
            fields["usage"] = orjson.dumps(outcome.usage.data()).decode()
        # Bounded by the writer's retry budget; the margin only guards against a bug there.
        async with asyncio.timeout(self.settings.write_retry_s + 30):
            await stream.finish(
                EndEvent("", outcome.finish_reason), fields, self.settings.stream_ttl_s
            )
        error_type = None if error is None else error.type
        log.info(
            "job_finished",
            finish_reason=outcome.finish_reason,
            deltas=tally.deltas,
            chars=tally.text_chars,
            error_type=error_type,
            duration_ms=round(tally.duration_s() * 1000, 1),
        )
        await self._record(state.upstream, fields["status"], tally, error_type)

    async def _record(
        self, upstream: str, status: str, tally: Tally, error_type: str | None
    ) -> None:
        """Add the finished job to the shared metrics; never fails the job."""
        with contextlib.suppress(RedisError, OSError):
            await self.control.record_job(
                status=status,
                upstream=upstream,
                ttft_s=tally.ttft_s(),
                duration_s=tally.duration_s(),
                deltas=tally.deltas,
                error_type=error_type,
            )
