"""What the API's routes share: settings and the Redis-backed services, made at start-up."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from redis.asyncio import Redis

from tokenrelay.connections import Streams, node_client, queue_client, streams_client
from tokenrelay.fanout import Hub
from tokenrelay.idempotency import IdempotencyStore
from tokenrelay.leases import Reaper
from tokenrelay.queue import JobQueue
from tokenrelay.settings import Settings
from tokenrelay.streams import EventLog


@dataclass
class Relay:
    settings: Settings
    redis: Streams  # job events and state (a single node or a cluster)
    queue: Redis  # the job queue, pub/sub, leases, metrics, admission counters
    events: EventLog
    hub: Hub
    reaper: Reaper
    idempotency: IdempotencyStore  # on the queue Redis: confirmed in the enqueue's MULTI/EXEC

    @classmethod
    async def open(cls, settings: Settings) -> Relay:
        queue = queue_client(settings)
        redis = streams_client(settings, queue)
        if not isinstance(redis, Redis):
            await redis.initialize()  # learn the cluster's slots before the first request
        events = EventLog.for_settings(redis, queue, settings)

        hub = Hub(events, functools.partial(node_client, settings))
        # Jobs whose worker died end even when no worker is left to notice.
        reaper = Reaper(
            events, JobQueue.for_settings(queue, redis, settings), lease_ttl_s=settings.lease_ttl_s
        )
        reaper.start()
        idempotency = IdempotencyStore(queue, ttl_s=settings.stream_ttl_s)
        return cls(settings, redis, queue, events, hub, reaper, idempotency)

    async def aclose(self) -> None:
        await self.reaper.aclose()
        await self.hub.aclose()
        await self.redis.aclose()
        if self.queue is not self.redis:
            await self.queue.aclose()
