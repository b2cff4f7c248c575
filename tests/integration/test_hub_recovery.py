"""The hub after a Redis restart: a new listener's events arrive at once, not after the hub's
blocked read times out (10 s), however many listeners join together."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from tests.integration.helpers import parse_sse, submit
from tests.support.servers import RedisServer
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.fanout import Hub, Subscription
from tokenrelay.keys import events_key
from tokenrelay.settings import Settings
from tokenrelay.store.connections import node_client, queue_client, streams_client
from tokenrelay.store.events import EventLog
from tokenrelay.wire import ZERO_ID

FIRST_DELTA_S = 0.3
"""The upstream's pause before its first piece: the listener is on the hub by then, so the
first delta reaches it through the hub's blocked read, never through the replay."""

PROMPT_S = 1.5
"""Submit to first delta, normal latency included (the stall this guards against is 10 s)."""


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "aof", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_system(
    tmp_path: Path, aof_redis: RedisServer, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    upstream.add("hubquiet", Scenario(pieces=["late"], first_delay_s=60.0))
    upstream.add("hubfirst", Scenario(pieces=["first ", "second"], first_delay_s=FIRST_DELTA_S))
    with relay_system(tmp_path / "sys", aof_redis.url, system_env(upstream)) as system:
        yield system


@dataclass(frozen=True)
class Took:
    total: float  # from the submit to the first delta
    hub: float  # from the delta's append (its id is Redis's clock, in ms) to its arrival

    def __repr__(self) -> str:
        return f"{self.total:.2f}s (hub {self.hub:.2f}s)"


async def first_delta_after(client: httpx.AsyncClient) -> Took:
    """Submit a job and follow it at once: how long its first delta took to arrive."""
    began = time.monotonic()
    job_id = await submit(client, model="hubfirst")
    seen = b""
    async with asyncio.timeout(15):
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            async for part in response.aiter_bytes():
                arrived = time.time()
                seen += part
                events, _ = parse_sse(seen[: seen.rfind(b"\n\n") + 2])
                deltas = [e for e in events if e.type == "delta"]
                if deltas:
                    appended = int(deltas[0].id.split("-")[0]) / 1000
                    return Took(time.monotonic() - began, arrived - appended)
    raise AssertionError(f"{job_id}: the stream ended without a delta: {seen!r}")


async def hold(client: httpx.AsyncClient, job_id: str) -> None:
    """Stay subscribed to a silent job, through the restart (reconnecting if dropped)."""
    while True:
        try:
            async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                async for _ in response.aiter_bytes():
                    pass
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)


@pytest.fixture
async def quiet_listeners(hub_system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    """A client, and two listeners on silent jobs: the hub's reader is blocked in XREAD and
    its control connection has been used (the second listener had to wake the first read)."""
    async with httpx.AsyncClient(base_url=hub_system.base_url, timeout=10) as client:
        holders = []
        for _ in range(2):
            job_id = await submit(client, model="hubquiet")
            holders.append(asyncio.create_task(hold(client, job_id)))
            await asyncio.sleep(0.3)
        try:
            took = await first_delta_after(client)
            assert took.total < PROMPT_S, f"slow even before the restart: {took}"
            yield client
        finally:
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)


async def restart(server: RedisServer) -> None:
    async def run_id() -> str:
        client = aioredis.Redis.from_url(server.url)
        try:
            return str((await client.info("server"))["run_id"])
        finally:
            await client.aclose()

    before = await run_id()
    server.stop()  # a clean shutdown: the append-only file keeps the jobs
    await asyncio.sleep(0.5)
    server.start()
    assert await run_id() != before
    await asyncio.sleep(1.0)  # the hub's reader reconnects and blocks again


async def test_new_listeners_after_a_redis_restart_get_events_at_once(
    aof_redis: RedisServer, quiet_listeners: httpx.AsyncClient
) -> None:
    await restart(aof_redis)
    took = [await first_delta_after(quiet_listeners) for _ in range(5)]
    assert max(t.total for t in took) < PROMPT_S and max(t.hub for t in took) < 1.0, took


async def test_many_listeners_joining_at_once_get_events_promptly(
    aof_redis: RedisServer, quiet_listeners: httpx.AsyncClient
) -> None:
    took = await asyncio.gather(*(first_delta_after(quiet_listeners) for _ in range(20)))
    assert max(t.total for t in took) < PROMPT_S and max(t.hub for t in took) < 1.0, took
    await restart(aof_redis)
    took = await asyncio.gather(*(first_delta_after(quiet_listeners) for _ in range(20)))
    assert max(t.total for t in took) < PROMPT_S and max(t.hub for t in took) < 1.0, took


# --- the hub in this process, on a real Valkey: the waker's fallbacks ---------------------------


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[Hub, aioredis.Redis]]:
    """A hub in this process on a Valkey of its own (its command counts are the hub's alone),
    and a plain client of that Valkey."""
    server = RedisServer(tmp_path / "hub")
    server.start()
    try:  # the server stops whatever fails after it started
        settings = Settings(redis_url=server.url)
        queue = queue_client(settings)
        log = EventLog(streams_client(settings, queue))
        hub = Hub(log, functools.partial(node_client, settings))
        try:
            yield hub, queue
        finally:
            await hub.aclose()
            await queue.aclose()
    finally:
        server.stop()


async def blocked(redis: aioredis.Redis) -> None:
    """Until a client (the hub's reader) is blocked in XREAD, as Redis sees it."""
    for _ in range(500):
        if any(c["cmd"] == "xread" and "b" in c["flags"] for c in await redis.client_list()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the hub's reader never blocked")


async def first_event(sub: Subscription) -> float:
    began = time.monotonic()
    async with asyncio.timeout(5):
        while not await sub.next(5.0):
            pass
    return time.monotonic() - began


async def test_a_stale_client_id_is_replaced_by_a_new_connection(
    hub: tuple[Hub, aioredis.Redis],
) -> None:
    """CLIENT UNBLOCK of a client id that is not the reader's any more answers 0: the waker
    gives up after a short while and resets the reader's connection instead."""
    hub_, redis = hub
    async with hub_.subscribe("job_quiet", ZERO_ID):
        await blocked(redis)
        (reader,) = hub_._readers.values()
        reader._client_id = 2**40  # as if redis-py had reconnected it behind the hub's back
        with capture_logs() as logs:
            async with hub_.subscribe("job_new", ZERO_ID) as sub:
                await redis.xadd(events_key("job_new"), {"t": "start", "d": "{}"})
                assert await first_event(sub) < 1.5
        assert any(entry["event"] == "hub_reader_reset" for entry in logs), logs
        assert reader._client_id != 2**40


async def test_many_jobs_added_at_once_share_one_unblock(hub: tuple[Hub, aioredis.Redis]) -> None:
    hub_, redis = hub
    async with hub_.subscribe("job_quiet", ZERO_ID):
        await blocked(redis)
        await redis.config_resetstat()
        jobs = [f"job_many{i}" for i in range(50)]
        subs = [hub_.subscribe(job, ZERO_ID) for job in jobs]
        for sub in subs:
            await sub.__aenter__()
        try:
            for job in jobs:
                await redis.xadd(events_key(job), {"t": "start", "d": "{}"})
            took = await asyncio.gather(*(first_event(sub) for sub in subs))
            assert max(took) < 1.5
        finally:
            for sub in subs:
                await sub.__aexit__(None, None, None)
        stats = await redis.info("commandstats")
        assert stats["cmdstat_client|unblock"]["calls"] <= 2, stats["cmdstat_client|unblock"]
