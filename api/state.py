"""What the API's routes share: settings and the Redis-backed services, made at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from tokenrelay.fanout import Hub
from tokenrelay.leases import Reaper
from tokenrelay.settings import Settings
from tokenrelay.streams import EventLog


@dataclass
class Relay:
    settings: Settings
    redis: Redis
    events: EventLog
    hub: Hub
    reaper: Reaper

    @classmethod
    async def open(cls, settings: Settings) -> Relay:
        redis = Redis.from_url(settings.redis_url)
        events = EventLog(redis, ttl_s=settings.stream_ttl_s, maxlen=settings.stream_maxlen)
        # The hub's reader keeps its one connection blocked in XREAD: it gets a client of its own.
        hub = Hub(events, Redis.from_url(settings.redis_url, single_connection_client=True))
        hub.start()
        # Jobs whose worker died end even when no worker is left to notice.
        reaper = Reaper(redis, ttl_s=settings.stream_ttl_s, maxlen=settings.stream_maxlen)
        reaper.start()
        return cls(settings, redis, events, hub, reaper)

    async def aclose(self) -> None:
        await self.reaper.aclose()
        await self.hub.aclose()
        await self.redis.aclose()
