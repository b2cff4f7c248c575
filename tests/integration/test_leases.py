"""Lease renewals under load: a worker whose shared Redis pool is busy keeps its leases.

Found by the 500-job benchmark (ops/bench/cpu.py): with renewals queued behind every job's
commands in the shared connection pool, a loaded worker's leases ran out and reapers ended
hundreds of live jobs as ``worker_lost``. Renewals now have a connection of their own and run
on the clock.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.asyncio import BlockingConnectionPool

from tokenrelay.keys import LEASES_KEY
from tokenrelay.store.leases import Leases
from tokenrelay.store.queue import JobQueue

LEASE_TTL_S = 0.6
STALL_S = 2.5


async def _stall(pool_client: aioredis.Redis, key: str) -> None:
    """Hold one of the pool's connections for STALL_S (a command that takes that long)."""
    await pool_client.blpop([key], timeout=STALL_S)


async def _lease_lapsed_while_stalled(redis_db: str, *, own_connection: bool) -> bool:
    # The shared pool, as busy as a loaded worker's: every connection taken by slow commands.
    pool = BlockingConnectionPool.from_url(redis_db, max_connections=2, timeout=None)
    shared = aioredis.Redis(connection_pool=pool)
    own = aioredis.Redis.from_url(redis_db, single_connection_client=True)
    jobs = JobQueue(shared, shared, lease_ttl_s=LEASE_TTL_S, in_progress_ttl_s=60)
    leases = Leases(jobs, lambda: {"job_a"}, own if own_connection else None)
    probe = aioredis.Redis.from_url(redis_db)
    try:
        await probe.delete(LEASES_KEY)
        await probe.zadd(LEASES_KEY, {"job_a": int(time.time() * 1000) + 600})
        stalls = [asyncio.create_task(_stall(shared, f"nothing:{i}")) for i in range(2)]
        await asyncio.sleep(0.05)  # the stalls hold both connections
        leases.start()
        lapsed = False
        async with asyncio.timeout(STALL_S + 5):
            while not all(s.done() for s in stalls):
                score = await probe.zscore(LEASES_KEY, "job_a")
                lapsed |= score is None or score < time.time() * 1000
                await asyncio.sleep(0.05)
            await asyncio.gather(*stalls)
        return lapsed
    finally:
        await leases.aclose()
        await probe.delete(LEASES_KEY)
        for client in (probe, own, shared):
            await client.aclose()
        await pool.disconnect()


@pytest.mark.parametrize("own_connection", [True, False], ids=["own", "shared"])
async def test_a_busy_shared_pool_lets_a_lease_lapse_only_without_its_own_connection(
    redis_db: str, own_connection: bool
) -> None:
    """The control case (renewals through the shared pool) shows the test can fail: there
    the lease lapses; with its own connection, as the worker runs it, it never does."""
    lapsed = await _lease_lapsed_while_stalled(redis_db, own_connection=own_connection)
    assert lapsed is not own_connection


def _slow_active() -> set[str]:
    time.sleep(0.1)  # a busy process: each renewal round costs 0.1 s of the loop
    return {"job_b"}


async def test_renewals_run_on_the_clock_not_after_the_work(redis_db: str) -> None:
    """Renewals are due a fixed interval apart, counted from when the previous one was due:
    the time a round takes does not push the next one back (sleeping an interval after each
    round would, here to one round per 0.4 s)."""
    own = aioredis.Redis.from_url(redis_db, single_connection_client=True)
    shared = aioredis.Redis.from_url(redis_db)
    jobs = JobQueue(shared, shared, lease_ttl_s=0.9, in_progress_ttl_s=60)  # every 0.3 s
    leases = Leases(jobs, _slow_active, own)
    try:
        leases.start()
        await asyncio.sleep(3.1)
        # 10 rounds are due in 3.1 s on the clock; drifting by 0.1 s a round gives 7.
        assert leases.renewals >= 9
    finally:
        await leases.aclose()
        await shared.delete(LEASES_KEY)
        await own.aclose()
        await shared.aclose()
