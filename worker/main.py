"""The arq worker: woken at once by new jobs, listening for cancels, running ``generate``."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import structlog
from arq.connections import RedisSettings, create_pool, log_redis_info
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenrelay.connections import queue_client, streams_client
from tokenrelay.events import CANCEL_CHANNEL, JOB_FUNCTION, WAKE_CHANNEL
from tokenrelay.leases import Leases, Reaper
from tokenrelay.metrics import heartbeat
from tokenrelay.settings import Settings
from tokenrelay.streams import EventLog, EventWriter
from worker.job import JobRunner

log = structlog.get_logger("tokenrelay.worker")


async def generate(ctx: dict[str, Any], job_id: str) -> None:
    """The arq job: run one attempt of generation job ``job_id``."""
    runner: JobRunner = ctx["runner"]
    await runner.run(job_id, job_try=int(ctx.get("job_try", 1)))


class RelayWorker(Worker):
    """arq's Worker, but a new job wakes it at once instead of waiting for the next poll.

    arq polls its queue every ``poll_delay`` (0.5 s by default): that alone would add a quarter
    second to every time-to-first-token. The API publishes on ``WAKE_CHANNEL`` after each
    enqueue; the worker waits on that (or a finished job freeing a slot), and still polls
    every ``poll_delay`` for deferred jobs and as a safety net.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._work = asyncio.Event()

    def wake(self) -> None:
        self._work.set()

    async def run_job(self, job_id: str, score: int) -> None:
        # Lease the job the moment it leaves the queue, so a death before it starts is noticed.
        runner: JobRunner | None = self.ctx.get("runner")
        if runner is None:
            await super().run_job(job_id, score)
            return
        await runner.leases.take(job_id)
        try:
            await super().run_job(job_id, score)
        finally:
            await runner.leases.release(job_id)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._work.set()  # a slot is free: take the next queued job now

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        delay = 0.05
        while True:
            self._work.clear()
            try:
                await self._poll_iteration()
                delay = 0.05
            except (RedisError, OSError) as exc:
                # Redis restarting or unreachable: keep the running jobs, retry the queue.
                log.warning("queue_poll_failed", error=type(exc).__name__, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), self.poll_delay_s)


async def _listen(redis: Redis, worker: RelayWorker, runner: JobRunner) -> None:
    """Follow the wake and cancel channels for the worker's life, reconnecting as needed."""
    delay = 0.05
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(WAKE_CHANNEL, CANCEL_CHANNEL)
            worker.wake()  # anything published while we were not listening
            delay = 0.05
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                if message is None:
                    continue
                if message["channel"] == CANCEL_CHANNEL.encode():
                    job_id = message["data"].decode()
                    if runner.cancel(job_id):
                        log.info("cancel_received", job_id=job_id)
                else:
                    worker.wake()
        except (RedisError, OSError) as exc:
            log.warning("worker_listener_retry", error=type(exc).__name__, delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _heartbeat(redis: Redis, worker_id: str) -> None:
    """Tell the API's ``/readyz`` this worker is alive, every two seconds."""
    while True:
        with contextlib.suppress(RedisError, OSError):
            await heartbeat(redis, worker_id)
        await asyncio.sleep(2.0)


def create_worker(settings: Settings) -> RelayWorker:
    """A worker for ``settings``; ``run()`` it (it handles SIGINT and SIGTERM)."""
    holder: dict[str, Any] = {}

    async def on_startup(ctx: dict[str, Any]) -> None:
        queue = queue_client(settings)
        redis = streams_client(settings, queue)
        events = EventLog.for_settings(redis, queue, settings)
        writer = EventWriter(
            redis, maxlen=settings.stream_maxlen, safety_ttl_s=settings.unfinished_ttl_s
        )
        writer.start()
        leases = Leases(queue, settings.lease_ttl_s, lambda: runner_.active())
        runner_ = JobRunner(settings, events, writer, leases)
        leases.start()
        reaper = Reaper.for_settings(redis, queue, settings)
        reaper.start()
        holder["background"] = [leases, reaper]
        holder["heartbeat"] = asyncio.create_task(_heartbeat(queue, runner_.worker_id))
        ctx["runner"] = runner_
        holder["clients"] = [redis] if redis is queue else [redis, queue]
        holder["listener"] = asyncio.create_task(_listen(queue, worker, runner_))
        log.info(
            "worker_started",
            upstreams=sorted(settings.upstreams),
            max_jobs=settings.max_jobs_per_worker,
        )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        for task in (holder.get("listener"), holder.get("heartbeat")):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for service in holder.get("background", []):
            await service.aclose()
        runner_: JobRunner | None = ctx.get("runner")
        if runner_ is not None:
            await runner_.writer.aclose()
            await runner_.aclose()
        for client in holder.get("clients", []):
            await client.aclose()
        log.info("worker_stopped")

    worker = RelayWorker(
        # Tries guard nothing here (a claim never runs a job twice): let arq re-run freely.
        functions=[func(generate, name=JOB_FUNCTION, max_tries=100)],
        redis_settings=RedisSettings.from_dsn(settings.queue_dsn),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_jobs=settings.max_jobs_per_worker,
        # Our own deadline (job_timeout_s) ends the stream properly; arq's is a backstop.
        job_timeout=settings.job_timeout_s + 60,
        keep_result=0,
        poll_delay=settings.queue_poll_s,
        handle_signals=True,
        # SIGTERM: take no new jobs, let running ones finish for this long, then stop the rest
        # (their streams end with worker_lost rather than breaking off).
        job_completion_wait=math.ceil(settings.shutdown_grace_s),
    )
    return worker
