"""Regression tests for the ways a stream once failed to end (issue: "every stream ends").

1. A Redis write error (``maxmemory`` for a moment; the streams server down past the write
   retry budget) left the job ``running`` forever, with no ``end`` and no lease.
2. A job that left arq's queue but was not yet leased was stranded for an hour when its worker
   died (or its connection was cut while writing the lease).

Each ends the way the README's failure table says, and leaves nothing behind in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from tests.integration.helpers import (
    Ev,
    assert_well_formed,
    collect,
    follow_resilient,
    submit,
    texts,
    wait_status,
)
from tests.support.faultproxy import FaultProxy
from tests.support.servers import RedisServer
from tests.support.system import relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.keys import LEASES_KEY
from tokenrelay.store.queue import QUEUE_NAME, TAKE_LUA

WRITE_RETRY_S = 2.0
LEASE_TTL_S = 1.5


async def queue_leftovers(url: str, job_id: str) -> dict[str, object]:
    """What the queue Redis still holds of a job that ended: nothing, when all is well."""
    client = aioredis.Redis.from_url(url)
    try:
        return {
            "queued": await client.zscore(QUEUE_NAME, job_id),
            "leased": await client.zscore(LEASES_KEY, job_id),
            "in_progress": await client.exists(f"arq:in-progress:{job_id}"),
            "arq_job": await client.exists(f"arq:job:{job_id}"),
        }
    finally:
        await client.aclose()


NOTHING_LEFT = {"queued": None, "leased": None, "in_progress": 0, "arq_job": 0}


async def settled(url: str, job_id: str, within: float = 5.0) -> dict[str, object]:
    """The queue's records of an ended job once released (right after its end is stored),
    or what is left of them after ``within`` seconds."""
    left = await queue_leftovers(url, job_id)
    for _ in range(int(within / 0.05)):
        if left == NOTHING_LEFT:
            break
        await asyncio.sleep(0.05)
        left = await queue_leftovers(url, job_id)
    return left


async def test_maxmemory_for_a_moment_mid_stream_loses_nothing(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Case 1: writes refused with OOM for a second are retried; the job ends normally."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    pieces = [f"oom{i} " for i in range(60)]
    upstream.add("oom", Scenario(pieces=pieces, delay_s=0.05))  # ~20 tokens/s, 3 s
    env = system_env(upstream, TOKENRELAY_WRITE_RETRY_S=str(WRITE_RETRY_S))
    control = aioredis.Redis(port=redis.port)
    try:
        with relay_system(tmp_path / "sys", redis.url, env) as system:
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
                job_id = await submit(c, model="oom")
                listener = asyncio.create_task(follow_resilient(c, job_id, within=30))
                await wait_status(c, job_id, "running")
                await asyncio.sleep(1.0)
                await control.config_set("maxmemory", "1")
                await asyncio.sleep(1.0)
                await control.config_set("maxmemory", "0")
                events, _ = await listener
                assert_well_formed(events)
                assert events[-1].data == {"finish_reason": "stop"}
                assert texts(events) == "".join(pieces)
                job = await wait_status(c, job_id, "succeeded")
                assert job["text"] == "".join(pieces)
                assert await collect(c, job_id) == events
                assert await settled(redis.url, job_id) == NOTHING_LEFT
                assert '"event_write_retry"' in system.log("worker0"), "OOM was met and retried"
    finally:
        await control.aclose()
        redis.stop()


async def test_streams_server_down_past_the_write_budget_ends_the_job(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Case 1, split Redis: the streams server is down longer than the write retry budget;
    once it is back, the job ends with a retryable error (README: outage over the budget)."""
    queue, streams = RedisServer(tmp_path / "q"), RedisServer(tmp_path / "s", appendonly=True)
    queue.start()
    streams.start()
    pieces = [f"down{i} " for i in range(100)]
    upstream.add("down", Scenario(pieces=pieces, delay_s=0.05))
    env = system_env(
        upstream,
        TOKENRELAY_QUEUE_URL=queue.url,
        TOKENRELAY_STREAMS_URL=streams.url,
        TOKENRELAY_WRITE_RETRY_S=str(WRITE_RETRY_S),
        TOKENRELAY_LEASE_TTL_S=str(LEASE_TTL_S),
        TOKENRELAY_REDIS_TIMEOUT_S="1",
    )
    try:
        with relay_system(tmp_path / "sys", queue.url, env) as system:
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
                job_id = await submit(c, model="down")
                listener = asyncio.create_task(
                    follow_resilient(c, job_id, within=60, max_reconnects=500)
                )
                await wait_status(c, job_id, "running")
                await asyncio.sleep(0.5)
                streams.stop()
                await asyncio.sleep(2 * WRITE_RETRY_S + 1)  # past the budget, and the last try
                streams.start()
                back = time.monotonic()
                events, _ = await listener
                took = time.monotonic() - back
                assert_well_formed(events)
                assert events[-1].data == {"finish_reason": "error"}
                error = events[-2].data
                assert error["type"] in ("store_unavailable", "worker_lost"), error
                assert error["retryable"] is True
                # README: lease TTL + 2 s after Redis answers again (+ 2 s for a loaded box).
                assert took < LEASE_TTL_S + 2 + 2.0, f"ended {took:.1f} s after Redis was back"
                job = await wait_status(c, job_id, "failed")
                assert job["text"] == texts(events)
                assert job["last_event_id"] == events[-1].id
                assert await collect(c, job_id) == events
                assert await settled(queue.url, job_id, within=10) == NOTHING_LEFT
    finally:
        queue.stop()
        streams.stop()


TAKE = hashlib.sha1(TAKE_LUA.encode()).hexdigest().encode()


async def _take_then(
    tmp_path: Path, upstream: UpstreamServer, *, split: bool, fault: str
) -> tuple[list[Ev], dict[str, object], float]:
    """Run a job whose worker meets ``fault`` the instant its take reaches Redis."""
    servers = [RedisServer(tmp_path / "q")] + ([RedisServer(tmp_path / "s")] if split else [])
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:  # each stopped whatever fails after it started
            server.start()
            stack.callback(server.stop)
        # Loaded beforehand, so the take the proxy stops is the one Redis runs (no NOSCRIPT).
        control = aioredis.Redis(port=servers[0].port)
        await control.script_load(TAKE_LUA)
        await control.aclose()
        proxy = FaultProxy(servers[0].port)
        await proxy.start()
        stack.push_async_callback(proxy.aclose)
        upstream.add("taken", Scenario(pieces=["one ", "two ", "three"], delay_s=0.01))
        env = system_env(
            upstream, TOKENRELAY_LEASE_TTL_S=str(LEASE_TTL_S), TOKENRELAY_REDIS_TIMEOUT_S="1"
        )
        if split:
            env["TOKENRELAY_STREAMS_URL"] = servers[1].url
        started = relay_system(tmp_path / "sys", proxy.url(), env)
        system = await asyncio.to_thread(started.__enter__)
        stack.push_async_callback(asyncio.to_thread, started.__exit__, None, None, None)
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
            trigger = proxy.arm(
                lambda cmd: cmd.name == "EVALSHA" and cmd.args[1] == TAKE,
                "hold_reply" if fault == "sigkill" else "cut",
            )
            job_id = await submit(c, model="taken")
            await trigger.wait(within=10)
            faulted = time.monotonic()
            if fault == "sigkill":  # the take is applied: in progress and leased, then death
                system.workers[0].send_signal(signal.SIGKILL)
                await asyncio.to_thread(system.workers[0].wait, 10)
                await trigger.release(False)
                await asyncio.to_thread(system.start_worker)
            events = await collect(c, job_id, within=30)
            took = time.monotonic() - faulted
            leftovers = await settled(servers[0].url, job_id)
            return events, leftovers, took


async def test_worker_killed_as_it_takes_a_job_is_seen_within_the_lease(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Case 2: taken and leased are one step, so a death right after it is a lapsed lease:
    on split Redis the job was not claimed yet and runs again; on one Redis the take claimed
    it too, and the reaper ends it with worker_lost. Either way within a lease TTL, not an
    hour."""
    for split in (True, False):
        events, leftovers, took = await _take_then(
            tmp_path / str(split), upstream, split=split, fault="sigkill"
        )
        assert took < LEASE_TTL_S + 1 + 3.0, f"split={split}: ended {took:.1f} s after the kill"
        assert leftovers == NOTHING_LEFT
        end = events[-1].data
        if split:
            assert end == {"finish_reason": "stop"}
            assert texts(events) == "one two three"
        else:
            assert end == {"finish_reason": "error"}
            assert events[-2].data["type"] == "worker_lost"


async def test_connection_cut_as_a_worker_takes_a_job_does_not_strand_it(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Case 2, the worker lives on: its take is cut before Redis has it; it takes the job
    again at once and runs it."""
    events, leftovers, took = await _take_then(tmp_path, upstream, split=False, fault="cut")
    assert events[-1].data == {"finish_reason": "stop"}
    assert texts(events) == "one two three"
    assert leftovers == NOTHING_LEFT
    assert took < 3.0


async def test_the_job_deadline_ends_the_stream(tmp_path: Path, upstream: UpstreamServer) -> None:
    """A job running past TOKENRELAY_JOB_TIMEOUT_S ends with upstream_timeout, keeping what
    it published."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    upstream.add("endless", Scenario(pieces=[f"e{i} " for i in range(400)], delay_s=0.02))
    env = system_env(upstream, TOKENRELAY_JOB_TIMEOUT_S="1")
    try:
        with relay_system(tmp_path / "sys", redis.url, env) as system:
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
                job_id = await submit(c, model="endless")
                events = await collect(c, job_id, within=10)
                assert_well_formed(events)
                assert events[-2].data["type"] == "upstream_timeout"
                assert "deadline" in events[-2].data["message"]
                assert events[-1].data == {"finish_reason": "error"}
                assert 0 < len(texts(events)) < len("".join(f"e{i} " for i in range(400)))
                job = await wait_status(c, job_id, "failed")
                assert job["text"] == texts(events)
                started = float(job["usage"]["duration_ms"]) if job["usage"] else 1000.0
                assert 900 <= started <= 3000, job["usage"]
    finally:
        redis.stop()


async def test_a_job_in_progress_without_a_lease_is_found_and_run(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """The state an older version left when its worker died between marking a job in
    progress (arq's hour-long mark) and leasing it: a sweep of the queue gives the job a
    lapsed lease, and the reaper hands it back; it runs once."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    upstream.add("stranded", Scenario(pieces=["found ", "again"]))
    env = system_env(upstream, TOKENRELAY_LEASE_TTL_S="1")
    try:
        with relay_system(tmp_path / "sys", redis.url, env, workers=0) as system:
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
                job_id = await submit(c, model="stranded")
                control = aioredis.Redis(port=redis.port)
                try:
                    await control.set(f"arq:in-progress:{job_id}", b"1", px=3_600_000)
                finally:
                    await control.aclose()
                await asyncio.to_thread(system.start_worker)
                events = await collect(c, job_id, within=20)
                assert_well_formed(events)
                assert events[-1].data == {"finish_reason": "stop"}
                assert texts(events) == "found again"
                assert [e.data["attempt"] for e in events if e.type == "start"] == [1]
                assert await settled(redis.url, job_id) == NOTHING_LEFT
    finally:
        redis.stop()
