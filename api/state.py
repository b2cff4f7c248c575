"""What the API's routes share: settings and the Redis-backed services, made at start-up."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from redis.asyncio import Redis

from tokenrelay.fanout import Hub
from tokenrelay.settings import Settings
from tokenrelay.store.connections import (
    Streams,
    close,
    node_client,
    queue_client,
    streams_client,
)
from tokenrelay.store.control import Control
from tokenrelay.store.events import EventLog
from tokenrelay.store.idempotency import IdempotencyStore
from tokenrelay.store.jobs import JobStore
from tokenrelay.store.leases import Reaper
from tokenrelay.store.queue import JobQueue
from tokenrelay.store.streams import DurableStreamStore


@dataclass
class Relay:
    settings: Settings
    redis: Streams  # job events and state (a single node or a cluster)
    queue: Redis  # the job queue, pub/sub, leases, metrics, admission counters
    events: EventLog  # a job's events, read
    jobs: JobStore  # a job's record and text: read, cancelled
    job_queue: JobQueue  # submit: the record and the queue entry; admission counts
    control: Control  # cancel signals, live workers, shared metrics
    hub: Hub
    reaper: Reaper
    idempotency: IdempotencyStore  # on the queue Redis: confirmed in the enqueue's MULTI/EXEC
    durable: DurableStreamStore  # Durable Streams' user streams (``api.compat.durable``)

    @classmethod
    async def open(cls, settings: Settings) -> Relay:
        queue = queue_client(settings)
        redis = streams_client(settings, queue)
        if not isinstance(redis, Redis):
            await redis.initialize()  # learn the cluster's slots before the first request
        events = EventLog(redis)
        jobs = JobStore.for_settings(redis, settings)
        job_queue = JobQueue.for_settings(queue, redis, settings)

        hub = Hub(events, functools.partial(node_client, settings))
        # Jobs whose worker died end even when no worker is left to notice.
        reaper = Reaper(jobs, job_queue, lease_ttl_s=settings.lease_ttl_s)
        reaper.start()
        idempotency = IdempotencyStore(queue, ttl_s=settings.stream_ttl_s)
        control = Control(queue)
        durable = DurableStreamStore(
            redis,
            retention_s=settings.stream_retention_s,
            replicated=settings.durability == "replicated",
            replica_wait_s=settings.replica_wait_s,
            write_retry_s=settings.write_retry_s,
        )
        return cls(
            settings,
            redis,
            queue,
            events,
            jobs,
            job_queue,
            control,
            hub,
            reaper,
            idempotency,
            durable,
        )

    async def aclose(self) -> None:
        await self.reaper.aclose()
        await self.hub.aclose()
        await self.jobs.aclose()
        await self.durable.aclose()
        await close(self.redis)
        if self.queue is not self.redis:
            await close(self.queue)
