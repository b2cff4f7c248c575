"""Leases on running jobs, so a job whose worker died still ends, within a bounded time.

A worker holds a lease on each job it runs: a member of one sorted set scored by the lease's
deadline (ms), renewed every second for all its jobs in one command. A reaper, in every API
and worker process, ends each job whose lease ran out with ``error`` ``worker_lost`` and the
one ``end``, atomically and only if the job is still running; it also takes the job's
ownership, so a worker that was merely stalled can no longer write to it.

A job's stream thus ends at most ``lease_ttl_s + REAP_INTERVAL_S`` after its worker died.
The lease is taken as soon as a worker takes the job from the queue, before it starts it: a
worker that dies in between leaves a queued job, which the reaper hands back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources

import orjson
import structlog
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenrelay.connections import Streams, script
from tokenrelay.events import KEY_PREFIX, WAKE_CHANNEL, job_keys
from tokenrelay.settings import Settings

log = structlog.get_logger("tokenrelay.leases")

LEASES_KEY = f"{KEY_PREFIX}:leases"
RENEW_INTERVAL_S = 1.0
REAP_INTERVAL_S = 1.0
REAP_BATCH = 100
REAP_LUA = (resources.files("tokenrelay") / "lua" / "reap.lua").read_text()
SLOT_LUA = (resources.files("tokenrelay") / "lua" / "slot.lua").read_text()
SLOT_POLL_S = 0.05


def _now_ms() -> int:
    return int(time.time() * 1000)


def slots_key(upstream: str) -> str:
    return f"{KEY_PREFIX}:slots:{upstream}"


class Leases:
    """The leases of one worker process's running jobs, and the upstream concurrency slots
    they hold (renewed with them, so a dead worker's slots lapse with its leases)."""

    def __init__(self, redis: Redis, ttl_s: float, active: Callable[[], set[str]]) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self._active = active
        self._task: asyncio.Task[None] | None = None
        self._slot = redis.register_script(SLOT_LUA)
        self._slots: dict[str, tuple[str, int]] = {}  # job -> (upstream, limit)

    async def acquire_slot(self, job_id: str, upstream: str, limit: int) -> None:
        """Wait until the job holds one of the upstream's ``limit`` slots, across all workers.
        Cancellable; callers bound the wait with the job's deadline."""
        # Polled: slots free up in other processes, and a pub/sub per release would cost
        # every worker a message per job; a 50 ms poll costs nothing while slots are free.
        for wait in itertools.count():
            if await self._take_slot(job_id, upstream, limit):
                self._slots[job_id] = (upstream, limit)
                return
            if wait == 0:
                log.info("upstream_slot_wait", upstream=upstream, limit=limit)
            await asyncio.sleep(SLOT_POLL_S * random.uniform(0.5, 1.5))

    async def _take_slot(self, job_id: str, upstream: str, limit: int) -> bool:
        now = _now_ms()
        args: list[str | int] = [job_id, now, now + self.ttl_ms, limit]
        return bool(await self._slot(keys=[slots_key(upstream)], args=args))

    async def release_slot(self, job_id: str) -> None:
        held = self._slots.pop(job_id, None)
        if held is not None:
            with contextlib.suppress(RedisError):
                await self.redis.zrem(slots_key(held[0]), job_id)

    async def take(self, job_id: str) -> None:
        """Hold a lease on ``job_id`` from now (before its first event is published)."""
        await self.redis.zadd(LEASES_KEY, {job_id: _now_ms() + self.ttl_ms})

    async def release(self, job_id: str) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.zrem(LEASES_KEY, job_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="tokenrelay-leases")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_INTERVAL_S)
            jobs = self._active()
            if not jobs:
                continue
            deadline = _now_ms() + self.ttl_ms
            try:
                # XX: renew only; a job the reaper or its end already removed stays removed.
                # One round trip for every lease and slot this process holds.
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(LEASES_KEY, dict.fromkeys(jobs, deadline), xx=True)
                    for job_id, (upstream, _) in list(self._slots.items()):
                        pipe.zadd(slots_key(upstream), {job_id: deadline}, xx=True)
                    await pipe.execute()
            except RedisError as exc:
                log.warning("lease_renew_failed", error=type(exc).__name__, jobs=len(jobs))


class Reaper:
    """Ends the jobs whose lease ran out. Safe to run in many processes at once."""

    def __init__(
        self, streams: Streams, queue: Redis, *, ttl_s: int, maxlen: int, lease_ttl_s: float
    ) -> None:
        self.streams = streams
        self.redis = queue  # leases, arq's records and the wake-up live with the queue
        self.ttl_s = ttl_s
        self.maxlen = maxlen
        # Reap only after Redis has answered for a whole lease TTL: after an outage (or this
        # process's start) live workers need that long to renew leases that lapsed meanwhile.
        self.grace_s = lease_ttl_s + RENEW_INTERVAL_S
        self._healthy_since: float | None = time.monotonic()
        self._script = script(streams, REAP_LUA)
        self._task: asyncio.Task[None] | None = None
        self.reaped = 0

    @classmethod
    def for_settings(cls, streams: Streams, queue: Redis, settings: Settings) -> Reaper:
        return cls(
            streams,
            queue,
            ttl_s=settings.stream_ttl_s,
            maxlen=settings.stream_maxlen,
            lease_ttl_s=settings.lease_ttl_s,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._reap_forever(), name="tokenrelay-reaper")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _reap_forever(self) -> None:
        while True:
            # Jitter, so reapers in many processes do not all wake at once.
            await asyncio.sleep(REAP_INTERVAL_S * random.uniform(0.5, 1.0))
            try:
                await self.redis.ping()
                if self._healthy_since is None:
                    self._healthy_since = time.monotonic()
                if time.monotonic() - self._healthy_since >= self.grace_s:
                    await self.reap_once()
            except (RedisError, OSError) as exc:
                self._healthy_since = None
                log.warning("reap_failed", error=type(exc).__name__)

    async def reap_once(self) -> int:
        """End every job whose lease has run out; returns how many this call ended."""
        expired = await self.redis.zrangebyscore(
            LEASES_KEY, "-inf", _now_ms(), start=0, num=REAP_BATCH
        )
        ended = 0
        for raw in expired:
            job_id = raw.decode()
            error = {
                "type": "worker_lost",
                "message": "the worker running this job stopped responding mid-stream",
                "retryable": True,
            }
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            done = await self._script(
                keys=list(job_keys(job_id)),
                args=[
                    now,
                    self.ttl_s,
                    orjson.dumps(error),
                    orjson.dumps({"finish_reason": "error"}),
                    self.maxlen,
                    orjson.dumps(error),
                ],
            )
            if done == 2:
                # arq still marks it in progress (for an hour): clear that so any worker
                # takes it again now, and wake them.
                await self.redis.delete(in_progress_key_prefix + job_id)
                await self.redis.publish(WAKE_CHANNEL, b"1")
                log.warning("job_requeued", job_id=job_id)
            await self.redis.zrem(LEASES_KEY, job_id)
            if done == 1:
                ended += 1
                log.warning("job_reaped", job_id=job_id)
        self.reaped += ended
        return ended
