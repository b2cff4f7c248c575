"""Idempotency-Keys of job submits, on the queue Redis: claimed as pending, then confirmed in the
very MULTI/EXEC that enqueues the job, so a confirmed key always names a job that exists.

A key's value is ``pending <job_id> <body hash>`` while its first request is submitting (for at
most ``PENDING_TTL_MS``), then ``<job_id> <body hash>`` for the stream TTL. A submit that fails
deletes its pending claim, and only its own (compare and delete): the key is free again.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from tokenrelay.keys import idempotency_key
from tokenrelay.store.connections import script

_LUA = resources.files("tokenrelay.store") / "lua"
CLAIM_LUA = (_LUA / "idem_claim.lua").read_text()
CONFIRM_LUA = (_LUA / "idem_confirm.lua").read_text()
RELEASE_LUA = (_LUA / "idem_release.lua").read_text()

PENDING_TTL_MS = 30_000
"""A pending claim lapses after this long, should its request die before confirming or
releasing it. Far longer than a submit takes."""

POLL_S = 0.02
"""How often a request waiting on another's pending claim looks again."""

_PENDING = "pending"


def fingerprint(body: Any) -> str:
    """The hash of a request body (JSON data) that a key is bound to: key order does not count.
    Raises ``orjson.JSONEncodeError`` for a value JSON cannot carry (an integer beyond 64 bits)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Held:
    """Who holds a key: the job a request is submitting (``pending``), or has submitted."""

    job_id: str
    body_hash: str
    pending: bool

    @classmethod
    def parse(cls, raw: bytes | str) -> Held:
        words = (raw.decode() if isinstance(raw, bytes) else raw).split(" ")
        pending = words[0] == _PENDING
        job_id, body_hash = words[1:3] if pending else words[0:2]
        return cls(job_id, body_hash, pending)

    def value(self) -> str:
        confirmed = f"{self.job_id} {self.body_hash}"
        return f"{_PENDING} {confirmed}" if self.pending else confirmed


class IdempotencyStore:
    """Claims, confirms and releases Idempotency-Keys on the Redis the job queue lives in (the
    confirm must share the enqueue's MULTI/EXEC). ``ttl_s``: how long a confirmed key lasts."""

    def __init__(self, redis: Redis, *, ttl_s: int, pending_ttl_ms: int = PENDING_TTL_MS) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.pending_ttl_ms = pending_ttl_ms
        self._claim = script(redis, CLAIM_LUA)
        self._release = script(redis, RELEASE_LUA)

    @staticmethod
    def key(scope: str, idempotency_key_: str) -> str:
        """The Redis key of a client's Idempotency-Key within ``scope`` (the tenant); the client's
        key is hashed, so any header value makes a well-formed key."""
        return idempotency_key(scope, hashlib.sha256(idempotency_key_.encode()).hexdigest())

    async def claim(
        self, key: str, job_id: str, body_hash: str, *, wait_s: float = 0.0
    ) -> Held | None:
        """Claim ``key`` for ``job_id`` as pending: None when claimed. Else who holds it: a
        confirmed job, another body's claim (at once), or the same body's claim still pending
        after ``wait_s`` (meanwhile looked at every ``POLL_S``: if it is confirmed, that is the
        answer; if it vanishes, this request claims the key itself)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        mine = Held(job_id, body_hash, pending=True).value()
        while True:
            raw = await self._claim(keys=[key], args=[mine, self.pending_ttl_ms])
            if raw is None:
                return None
            held = Held.parse(raw)
            if not held.pending or held.body_hash != body_hash or loop.time() >= give_up:
                return held
            await asyncio.sleep(POLL_S)

    def confirm(self, pipe: Any, key: str, job_id: str, body_hash: str) -> None:
        """Queue the confirm of our pending claim on ``pipe``: the MULTI/EXEC that enqueues the
        job. A key that another request holds by then (ours lapsed) is left alone."""
        pending = Held(job_id, body_hash, pending=True).value()
        confirmed = Held(job_id, body_hash, pending=False).value()
        # EVAL, not EVALSHA: a NOSCRIPT inside the MULTI would enqueue the job unconfirmed.
        pipe.eval(CONFIRM_LUA, 1, key, pending, confirmed, self.ttl_s)

    async def release(self, key: str, held: Held) -> bool:
        """Delete ``key`` if it is still ``held`` (a failed submit's claim, or a key whose job is
        gone); True if it did."""
        return bool(await self._release(keys=[key], args=[held.value()]))

    async def lookup(self, key: str) -> Held | None:
        raw = await self.redis.get(key)
        return None if raw is None else Held.parse(raw)
