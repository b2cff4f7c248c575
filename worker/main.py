"""The worker process: takes jobs off the queue (woken at once by new ones), listens for
cancels, and runs each job to its one ``end``."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import RedisError

from tokenrelay.settings import Settings
from tokenrelay.store.connections import Streams, close, queue_client, streams_client
from tokenrelay.store.control import Control
from tokenrelay.store.durability import event_writer
from tokenrelay.store.jobs import JobStore
from tokenrelay.store.leases import Reaper
from tokenrelay.store.queue import JobQueue, QueueWorker, Taken
from worker.job import JobRunner

log = structlog.get_logger("tokenrelay.worker")


async def _heartbeat(control: Control, worker_id: str) -> None:
    """Tell the API's ``/readyz`` this worker is alive, every two seconds."""
    while True:
        with contextlib.suppress(RedisError, OSError):
            await control.heartbeat(worker_id)
        await asyncio.sleep(2.0)


@dataclass
class _Services:
    """What a worker process runs beside its jobs, made at start-up, closed at shutdown."""

    clients: list[Streams] = field(default_factory=list)
    runner: JobRunner | None = None
    reaper: Reaper | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.reaper is not None:
            await self.reaper.aclose()
        if self.runner is not None:
            await self.runner.leases.aclose()
            await self.runner.writer.aclose()
            await self.runner.records.aclose()
            await self.runner.aclose()
        for client in self.clients:
            await close(client)


def create_worker(settings: Settings) -> QueueWorker:
    """A worker for ``settings``; ``run()`` it (it handles SIGINT and SIGTERM)."""
    services = _Services()

    async def run(taken: Taken) -> None:
        assert services.runner is not None
        await services.runner.run(taken)

    async def on_startup(ctx: dict[str, Any]) -> None:
        queue = queue_client(settings)
        redis = streams_client(settings, queue)
        # The lease renewals' own connection: never behind the jobs' commands in the pool.
        leases = queue_client(settings, single_connection_client=True)
        services.clients = [redis, leases] if redis is queue else [redis, queue, leases]
        records = JobStore.for_settings(redis, settings)
        writer = event_writer(redis, settings)
        writer.start()
        jobs = JobQueue.for_settings(queue, redis, settings)
        worker.attach(
            jobs, safety_ttl_s=settings.unfinished_ttl_s, take_retry_s=settings.write_retry_s
        )
        control = Control(queue)
        runner = services.runner = JobRunner(
            settings, records, writer, jobs, control, worker.worker_id, leases
        )
        runner.leases.start()
        services.reaper = Reaper(records, jobs, lease_ttl_s=settings.lease_ttl_s)
        services.reaper.start()
        services.tasks = [
            asyncio.create_task(_heartbeat(control, worker.worker_id)),
            asyncio.create_task(control.follow_signals(worker.wake, runner.cancel)),
        ]
        log.info(
            "worker_started",
            upstreams=sorted(settings.upstreams),
            max_jobs=settings.max_jobs_per_worker,
        )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await services.aclose()
        log.info("worker_stopped")

    worker = QueueWorker.for_settings(run, settings, on_startup=on_startup, on_shutdown=on_shutdown)
    return worker
