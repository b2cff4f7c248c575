"""The queue's take against a real Redis: what is due, what a take holds, and idempotence."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from tokenrelay.keys import LEASES_KEY
from tokenrelay.store.queue import CLOCK_SKEW_MS, QUEUE_NAME, JobQueue, new_owner
from tokenrelay.wire import now_rfc3339


async def _queue(url: str) -> tuple[aioredis.Redis, JobQueue]:
    client = aioredis.Redis.from_url(url)
    # The streams on another "Redis" (another client): the take then only takes and leases.
    jobs = JobQueue(client, aioredis.Redis.from_url(url), lease_ttl_s=5, in_progress_ttl_s=60)
    return client, jobs


async def test_a_job_enqueued_in_this_millisecond_or_on_a_fast_clock_is_taken(
    redis_db: str,
) -> None:
    """arq rounds the enqueue time, and another host's clock may run ahead: a job scored a
    little after the taker's now is still due (once it waited a whole poll: 1 s)."""
    client, jobs = await _queue(redis_db)
    try:
        now = int(time.time() * 1000)
        await client.zadd(QUEUE_NAME, {"job_soon": now + 1, "job_skewed": now + 400})
        await client.zadd(QUEUE_NAME, {"job_later": now + CLOCK_SKEW_MS + 60_000})
        assert sorted(await jobs.ready(10)) == ["job_skewed", "job_soon"]
        ids = ["job_soon", "job_skewed", "job_later"]
        owners = [new_owner("w") for _ in ids]
        taken = await jobs.take(ids, owners, now_rfc3339(), 60)
        assert [t.job_id for t in taken] == ["job_soon", "job_skewed"]
        leased = await client.zrange(LEASES_KEY, 0, -1)
        assert sorted(leased) == [b"job_skewed", b"job_soon"]
    finally:
        await client.aclose()
        await jobs.streams.aclose()


async def test_a_take_again_by_its_owner_is_the_same_take(redis_db: str) -> None:
    """A take whose reply was lost, sent again: the same owner gets it, another does not."""
    client, jobs = await _queue(redis_db)
    try:
        await client.zadd(QUEUE_NAME, {"job_once": int(time.time() * 1000)})
        owner = new_owner("w")
        first = await jobs.take(["job_once"], [owner], now_rfc3339(), 60)
        again = await jobs.take(["job_once"], [owner], now_rfc3339(), 60)
        other = await jobs.take(["job_once"], [new_owner("w2")], now_rfc3339(), 60)
        assert [t.owner for t in first] == [owner] and [t.owner for t in again] == [owner]
        assert other == []
        assert await jobs.ready(10) == []
    finally:
        await client.aclose()
        await jobs.streams.aclose()
