"""Leases on taken jobs, so a job whose worker died still ends, within a bounded time.

A worker holds a lease on each job it took off the queue (taken and leased in one Lua call,
see ``tokenrelay.store.queue``): a member of one sorted set scored by the lease's deadline (ms),
renewed every second for all its jobs in one round trip, and released only once the job's
``end`` is stored. A reaper, in every API and worker process, looks at each lapsed lease:

- the job is running (claimed, maybe mid-stream, maybe while writing its end): it ends it
  with ``error`` ``worker_lost`` and the one ``end``, atomically, and takes the job's
  ownership so a worker that was merely stalled can no longer write to it;
- the job is still queued (its taker died or stalled before claiming it): it voids that
  taker's claim and hands the job back to the queue, where any worker takes it again;
- the job has ended, or is gone: it only tidies the queue's records away.

A job's stream thus ends at most ``lease_ttl_s + REAP_INTERVAL_S`` after its worker died,
once Redis answers. Jobs marked in progress with no lease at all (taken by something that
never leased them) are found by a slow sweep of the queue and given a lapsed lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable
from importlib import resources

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from tokenrelay.keys import REAPER_PROBE_KEY, slots_key
from tokenrelay.store.connections import Streams, follow_primary, script
from tokenrelay.store.jobs import JobStore
from tokenrelay.store.queue import JobQueue

log = structlog.get_logger("tokenrelay.leases")

RENEW_INTERVAL_S = 1.0
REAP_INTERVAL_S = 1.0
REAP_BATCH = 100
SWEEP_EVERY = 5
"""Reap rounds between two pages of the sweep for in-progress jobs without a lease."""
SLOT_LUA = (resources.files("tokenrelay.store") / "lua" / "slot.lua").read_text()
SLOT_POLL_S = 0.05
WORKER_LOST = {
    "type": "worker_lost",
    "message": "the worker running this job stopped responding mid-stream",
    "retryable": True,
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Background:
    """A loop that runs beside a process's work from ``start()`` to ``aclose()``."""

    _task: asyncio.Task[None] | None = None
    _name = "tokenrelay-background"

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name=self._name)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        raise NotImplementedError


class Leases(_Background):
    """Renews the leases of one worker process's jobs, and the upstream concurrency slots
    they hold (renewed with them, so a dead worker's slots lapse with its leases)."""

    def __init__(
        self, jobs: JobQueue, active: Callable[[], set[str]], redis: Redis | None = None
    ) -> None:
        self.jobs = jobs
        # Renewals on a connection of their own (``redis``): behind a busy pool (every job's
        # writes, claims, takes) a renewal would wait its turn while the leases run out.
        self.redis = jobs.redis if redis is None else redis
        self.ttl_ms = jobs.lease_ttl_ms
        self._active = active
        self._name = "tokenrelay-leases"
        self._slot = script(jobs.redis, SLOT_LUA)
        self._slots: dict[str, tuple[str, int]] = {}  # job -> (upstream, limit)
        self.renewals = 0

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
            with contextlib.suppress(RedisError, OSError):
                await self.jobs.redis.zrem(slots_key(held[0]), job_id)

    async def _forever(self) -> None:
        # At least three renewals a TTL, so one slow round trip never lets a lease lapse. On
        # the clock: each renewal is due ``interval`` after the previous one was due, not
        # after it was done, so a busy process's late wake-ups and slow replies do not add up.
        interval = min(RENEW_INTERVAL_S, self.ttl_ms / 3000)
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due, loop.time() - interval)  # far behind: do not renew in a burst
            await self.renew_once()

    async def renew_once(self) -> None:
        """Push every active job's lease (and its slot) a TTL ahead, in one round trip."""
        jobs = self._active()
        if not jobs:
            return
        slots: dict[str, list[str]] = {}
        for job_id, (upstream, _) in list(self._slots.items()):
            slots.setdefault(slots_key(upstream), []).append(job_id)
        try:
            await self.jobs.renew(sorted(jobs), slots, redis=self.redis)
            self.renewals += 1
            # On Sentinel: if that went to a primary the Sentinels no longer name (a split
            # brain), again to theirs. After the renewal, so a slow Sentinel never delays it.
            if await follow_primary(self.redis):
                log.warning("lease_connection_moved", jobs=len(jobs))
                await self.jobs.renew(sorted(jobs), slots, redis=self.redis)
        except (RedisError, OSError) as exc:
            log.warning("lease_renew_failed", error=type(exc).__name__, jobs=len(jobs))


class Reaper(_Background):
    """Ends the jobs whose lease ran out, hands back those never claimed. Safe to run in many
    processes at once: every step is atomic and checks the state it acts on."""

    def __init__(self, records: JobStore, jobs: JobQueue, *, lease_ttl_s: float) -> None:
        self.records = records
        self.jobs = jobs
        # Reap only after Redis has taken writes for a whole lease TTL: after an outage (or
        # this process's start) live workers need that long to renew leases that lapsed
        # meanwhile. A write, not a PING: at maxmemory or on a replica Redis answers PING
        # but refuses the renewals.
        self.grace_s = lease_ttl_s + RENEW_INTERVAL_S
        self.interval_s = min(REAP_INTERVAL_S, lease_ttl_s / 2)
        self._healthy_since: float | None = time.monotonic()
        self._name = "tokenrelay-reaper"
        self._rounds = 0
        self.reaped = 0
        self.requeued = 0

    async def _forever(self) -> None:
        while True:
            # Jitter, so reapers in many processes do not all wake at once.
            await asyncio.sleep(self.interval_s * random.uniform(0.5, 1.0))
            try:
                # Connections moved to another primary (a split brain's stale one left): the
                # workers' renewals may have gone there too; give them a lease TTL here.
                moved = await follow_primary(self.jobs.redis)
                if self.records.redis is not self.jobs.redis:
                    moved = await follow_primary(self.records.redis) or moved
                if moved:
                    self._healthy_since = time.monotonic()
                await self._probe(self.jobs.redis)
                if self.records.redis is not self.jobs.redis:
                    await self._probe(self.records.redis)
                if self._healthy_since is None:
                    self._healthy_since = time.monotonic()
                if time.monotonic() - self._healthy_since >= self.grace_s:
                    self._rounds += 1
                    if self._rounds % SWEEP_EVERY == 0:
                        await self.jobs.sweep()
                    await self.reap_once()
            except (RedisError, OSError) as exc:
                self._healthy_since = None
                log.warning("reap_failed", error=type(exc).__name__)

    @staticmethod
    async def _probe(redis: Streams) -> None:
        await redis.set(REAPER_PROBE_KEY, b"1", px=10_000)

    async def reap_once(self) -> int:
        """Settle every job whose lease has run out; returns how many this call ended."""
        ended = 0
        for job_id, taker in await self.jobs.lapsed(REAP_BATCH):
            try:
                done = await self.records.fail(job_id, WORKER_LOST, void=taker)
            except ResponseError as exc:
                # This job's node refused or has no replica to acknowledge its end
                # (durability ``replicated``): the others may be on healthy nodes; this one
                # stays lapsed and is tried again next round.
                log.warning("reap_deferred", job_id=job_id, error=str(exc)[:80])
                continue
            if done == 2:
                if await self.jobs.requeue(job_id, taker):
                    self.requeued += 1
                    log.warning("job_requeued", job_id=job_id)
                continue
            await self.jobs.finish(job_id)
            if done == 1:
                ended += 1
                log.warning("job_reaped", job_id=job_id)
        self.reaped += ended
        return ended
