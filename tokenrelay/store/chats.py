"""AI SDK chats' current generations, on the queue Redis: a chat id -> the job answering it now.

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
    def key(chat_id: str) -> str:
        """The Redis key of a chat; the client's id is hashed, so any id makes a well-formed
        key."""
        return chat_key(hashlib.sha256(chat_id.encode()).hexdigest())

    def point(self, pipe: Any, chat_id: str, generation: Generation, ttl_s: int) -> None:
        """Queue on ``pipe`` (the MULTI/EXEC that enqueues the job) the pointer from
        ``chat_id`` to ``generation``, for ``ttl_s`` seconds."""
        pipe.set(self.key(chat_id), f"{generation.tenant} {generation.job_id}", ex=ttl_s)

    async def current(self, chat_id: str) -> Generation | None:
        """The chat's latest generation, finished or not; None if it has none (or it lapsed)."""
        raw = await self.redis.get(self.key(chat_id))
        if raw is None:
            return None
        tenant, _, job_id = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
        return Generation(tenant, job_id)
