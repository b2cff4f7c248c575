"""AI SDK chats' current generations, on the queue Redis: a tenant's chat id -> the job
answering it now. Chats are per tenant: two API keys using the same chat id have two chats.

A pointer is set in the MULTI/EXEC that enqueues its job (``JobQueue.submit``'s
``on_enqueue``), so it never names a job that was not queued; it lasts as long as an unfinished
job's records, and a newer generation of the chat replaces it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tokenrelay.keys import chat_key


@dataclass(frozen=True, slots=True)
class Generation:
    """A chat's current generation: the tenant that started it and its job."""

    tenant: str
    job_id: str


class Chats:
    """The chat -> current job pointers, on the Redis the job queue lives in."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def key(tenant: str, chat_id: str) -> str:
        """The Redis key of the tenant's chat: both hashed (length-prefixed, so no two pairs
        meet), so any id makes a well-formed key."""
        digest = hashlib.sha256(b"%d:%s%s" % (len(tenant), tenant.encode(), chat_id.encode()))
        return chat_key(digest.hexdigest())

    def point(self, pipe: Any, chat_id: str, generation: Generation, ttl_s: int) -> None:
        """Queue on ``pipe`` (the MULTI/EXEC that enqueues the job) the pointer from the
        generation's tenant's ``chat_id`` to ``generation``, for ``ttl_s`` seconds."""
        key = self.key(generation.tenant, chat_id)
        pipe.set(key, f"{generation.tenant} {generation.job_id}", ex=ttl_s)

    async def current(self, tenant: str, chat_id: str) -> Generation | None:
        """The tenant's chat's latest generation, finished or not; None if it has none (or it
        lapsed)."""
        raw = await self.redis.get(self.key(tenant, chat_id))
        if raw is None:
            return None
        tenant, _, job_id = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
        return Generation(tenant, job_id)
