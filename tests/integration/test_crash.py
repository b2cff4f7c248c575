"""Workers killed or stopped mid-stream, and Redis restarted: every stream still ends once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.helpers import (
    assert_well_formed,
    collect,
    follow_resilient,
    submit,
    texts,
    wait_status,
)
from tests.support.servers import RedisServer
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer

LEASE_TTL_S = 2.0


@pytest.fixture
def crash_system(tmp_path: Path, redis_db: str, upstream: UpstreamServer) -> Iterator[RelaySystem]:
    env = system_env(
        upstream, TOKENRELAY_LEASE_TTL_S=str(LEASE_TTL_S), TOKENRELAY_SHUTDOWN_GRACE_S="3"
    )
    with relay_system(tmp_path, redis_db, env) as system:
        yield system


def slow(name: str, upstream: UpstreamServer, n: int, delay: float) -> str:
    upstream.add(name, Scenario(pieces=[f"{name}{i} " for i in range(n)], delay_s=delay))
    return "".join(f"{name}{i} " for i in range(n))


async def test_worker_killed_mid_stream_ends_the_stream_with_worker_lost(
    crash_system: RelaySystem, upstream: UpstreamServer
) -> None:
    slow("kill9", upstream, 200, 0.03)
    async with httpx.AsyncClient(base_url=crash_system.base_url, timeout=10) as c:
        job_id = await submit(c, model="kill9")
        listener = asyncio.create_task(collect(c, job_id, within=30))
        await wait_status(c, job_id, "running")
        await asyncio.sleep(0.5)
        crash_system.workers[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        events = await listener
        took = time.monotonic() - killed_at
        assert took < LEASE_TTL_S + 2.5, f"the stream ended {took:.1f} s after the kill"
        assert_well_formed(events)
        assert events[-2].type == "error"
        assert events[-2].data["type"] == "worker_lost" and events[-2].data["retryable"] is True
        assert events[-1].data == {"finish_reason": "error"}
        job = (await c.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "failed" and job["text"] == texts(events)
        assert job["text"].startswith("kill90 kill91 ")
        # A new worker takes new jobs; the dead job stays ended (one end, still).
        await asyncio.to_thread(crash_system.start_worker)
        again = await submit(c, model="hello")
        assert_well_formed(await collect(c, again))
        assert await collect(c, job_id) == events


async def test_sigterm_lets_a_running_job_finish(
    crash_system: RelaySystem, upstream: UpstreamServer
) -> None:
    expected = slow("term", upstream, 30, 0.03)  # about 1 s, within the 3 s grace
    async with httpx.AsyncClient(base_url=crash_system.base_url, timeout=10) as c:
        job_id = await submit(c, model="term")
        listener = asyncio.create_task(collect(c, job_id, within=30))
        await wait_status(c, job_id, "running")
        await asyncio.sleep(0.2)
        crash_system.workers[0].send_signal(signal.SIGTERM)
        events = await listener
        assert_well_formed(events)
        assert events[-1].data == {"finish_reason": "stop"}
        assert texts(events) == expected
        assert await asyncio.to_thread(crash_system.workers[0].wait, 15) == 0


async def test_sigterm_past_the_grace_ends_the_stream_cleanly(
    crash_system: RelaySystem, upstream: UpstreamServer
) -> None:
    slow("longterm", upstream, 400, 0.03)  # 12 s: longer than the 3 s grace
    async with httpx.AsyncClient(base_url=crash_system.base_url, timeout=10) as c:
        job_id = await submit(c, model="longterm")
        listener = asyncio.create_task(collect(c, job_id, within=30))
        await wait_status(c, job_id, "running")
        crash_system.workers[0].send_signal(signal.SIGTERM)
        events = await listener
        assert_well_formed(events)
        assert events[-2].data["type"] == "worker_lost"
        assert events[-1].data == {"finish_reason": "error"}
        job = (await c.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "failed" and job["text"] == texts(events)
        assert await asyncio.to_thread(crash_system.workers[0].wait, 15) == 0


async def run_id(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        return str((await client.info("server"))["run_id"])
    finally:
        await client.aclose()


async def test_redis_restart_loses_no_acknowledged_event(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    redis = RedisServer(tmp_path / "aof", appendonly=True)
    redis.start()
    try:
        expected = slow("restart", upstream, 120, 0.03)
        env = system_env(upstream)
        with relay_system(tmp_path / "sys", redis.url, env) as system:
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
                job_id = await submit(c, model="restart")
                listener = asyncio.create_task(follow_resilient(c, job_id, within=60))
                await asyncio.sleep(1.0)
                before = await run_id(redis.url)
                redis.stop()  # a clean shutdown flushes the append-only file
                await asyncio.sleep(0.5)
                redis.start()
                assert await run_id(redis.url) != before, "Redis really restarted"
                # The API rides through the outage (its reader reconnects), or the client
                # resumes with Last-Event-ID: either way nothing is lost or repeated.
                events, _ = await listener
                assert_well_formed(events)
                assert texts(events) == expected
                job = await wait_status(c, job_id, "succeeded")
                assert job["text"] == expected
                assert await collect(c, job_id) == events
                # Both processes are still serving after the outage.
                again = await submit(c, model="hello")
                assert_well_formed(await collect(c, again))
    finally:
        redis.stop()


async def test_a_job_whose_worker_died_before_starting_it_runs_again(
    tmp_path: Path, redis_db: str, upstream: UpstreamServer
) -> None:
    """The state a worker leaves when it dies between taking a job from arq's queue and
    starting it: arq's in-progress mark (an hour long) and an expired lease, status queued."""
    url = redis_db
    env = system_env(upstream, TOKENRELAY_LEASE_TTL_S="2")
    with relay_system(tmp_path, url, env, workers=0) as system:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
            job_id = await submit(c, model="hello")
            r = aioredis.Redis.from_url(url)
            try:
                await r.set(f"arq:in-progress:{job_id}", b"1", px=3_600_000)
                await r.zadd("tr:leases", {job_id: int(time.time() * 1000) - 1})
            finally:
                await r.aclose()
            await asyncio.to_thread(system.start_worker)
            events = await collect(c, job_id, within=15)
            assert_well_formed(events)
            assert events[-1].data == {"finish_reason": "stop"}
            assert [e.data["attempt"] for e in events if e.type == "start"] == [1]
            assert '"job_requeued"' in system.log("api") + system.log("worker0")


async def test_a_redis_outage_longer_than_the_lease_ends_no_healthy_job(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Leases lapse while Redis is down; reapers wait a lease TTL after it is back, so the
    workers renew them first and nothing is reaped."""
    redis = RedisServer(tmp_path / "aof", appendonly=True)
    redis.start()
    try:
        expected = slow("outage", upstream, 120, 0.05)  # 6 s
        env = system_env(upstream, TOKENRELAY_LEASE_TTL_S="2")
        with relay_system(tmp_path / "sys", redis.url, env) as system:
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
                job_id = await submit(c, model="outage")
                listener = asyncio.create_task(follow_resilient(c, job_id, within=60))
                await asyncio.sleep(1.0)
                redis.stop()
                await asyncio.sleep(LEASE_TTL_S + 1.5)  # longer than a lease
                redis.start()
                events, _ = await listener
                assert_well_formed(events)
                assert events[-1].data == {"finish_reason": "stop"}, events[-3:]
                assert texts(events) == expected
    finally:
        redis.stop()
