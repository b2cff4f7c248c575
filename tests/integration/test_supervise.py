"""``tokenrelay worker --processes N`` and ``tokenrelay api --workers N``: real processes, real
signals. The children share nothing but Redis; the supervisor passes SIGTERM on, restarts a
dead child, and gives up (exit 1) after five quick deaths in a row."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis.asyncio as aioredis

from tests.integration.helpers import assert_well_formed, collect, submit, texts
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.cli.supervise import MAX_QUICK_DEATHS, Supervisor
from tokenrelay.keys import job_key
from tokenrelay.processes import Child, free_port, http_ok

GRACE_S = 3.0


@pytest.fixture
def api_only(tmp_path: Path, redis_db: str, upstream: UpstreamServer) -> Iterator[RelaySystem]:
    """An API (one process) and no worker: each test starts its supervised ones."""
    env = system_env(upstream, TOKENRELAY_SHUTDOWN_GRACE_S=str(GRACE_S))
    with relay_system(tmp_path, redis_db, env, workers=0) as system:
        yield system


def children(child: Child, count: int, within: float = 20.0) -> list[psutil.Process]:
    """The supervisor's ``count`` children, once there are that many."""
    deadline = time.monotonic() + within
    while True:
        found = psutil.Process(child.pid).children()
        if len(found) == count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_log_count(system: RelaySystem, name: str, text: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while system.log(name).count(text) < count:
        assert time.monotonic() < deadline, f"{text} {count}x not in {name}.log"
        time.sleep(0.05)


async def test_worker_processes_share_the_jobs_and_stop_gracefully_on_sigterm(
    api_only: RelaySystem, upstream: UpstreamServer
) -> None:
    sup = api_only._start("workers", "worker", "--processes", "2")
    await asyncio.to_thread(wait_log_count, api_only, "workers", '"worker_started"', 2, 20)
    pids = {p.pid for p in children(sup, 2)}
    assert len(pids) == 2
    upstream.add("sup_slow", Scenario(pieces=[f"s{i} " for i in range(30)], delay_s=0.05))
    async with httpx.AsyncClient(base_url=api_only.base_url, timeout=10) as c:
        # Each child takes jobs on its own: every job ran in one of them, to its end.
        ids = [await submit(c, model="sup_slow") for _ in range(8)]
        async with asyncio.timeout(30):
            results = await asyncio.gather(*(collect(c, job_id, within=30) for job_id in ids))
        for events in results:
            assert_well_formed(events)
            assert texts(events) == "".join(f"s{i} " for i in range(30))
        r = aioredis.Redis.from_url(api_only.redis_url)
        owners = {(await r.hget(job_key(j), "owner") or b"").decode() for j in ids}
        await r.aclose()
        assert {int(o.split(":")[1]) for o in owners} <= pids
        # SIGTERM while a job runs: as one worker does, it finishes the job, then exits 0.
        job_id = await submit(c, model="sup_slow")
        listener = asyncio.create_task(collect(c, job_id, within=30))
        await asyncio.sleep(0.5)
        sup.send_signal(signal.SIGTERM)
        events = await listener
        assert_well_formed(events)
        assert events[-1].data["finish_reason"] == "stop"
    assert await asyncio.to_thread(sup.wait, GRACE_S + 15) == 0
    assert not any(alive(pid) for pid in pids), "a child outlived its supervisor"


async def test_a_dead_worker_process_is_started_again(api_only: RelaySystem) -> None:
    sup = api_only._start("workers", "worker", "--processes", "2")
    await asyncio.to_thread(wait_log_count, api_only, "workers", '"worker_started"', 2, 20)
    first = {p.pid for p in children(sup, 2)}
    victim = min(first)
    psutil.Process(victim).kill()
    await asyncio.to_thread(wait_log_count, api_only, "workers", '"worker_started"', 3, 20)
    now = {p.pid for p in children(sup, 2)}
    assert len(now) == 2 and victim not in now and (first - {victim}) <= now
    assert '"process_exited"' in api_only.log("workers")
    sup.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(sup.wait, GRACE_S + 15) == 0


def test_children_that_keep_dying_make_the_supervisor_exit_1() -> None:
    command = [sys.executable, "-c", "raise SystemExit(3)"]
    supervisor = Supervisor("dying", command, 2, stop_grace_s=5)
    t0 = time.monotonic()
    assert supervisor.run() == 1
    assert supervisor.quick_deaths == MAX_QUICK_DEATHS
    assert time.monotonic() - t0 < 20


async def test_api_workers_share_one_port_and_stop_on_sigterm(
    api_only: RelaySystem, upstream: UpstreamServer
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sup = api_only._start("apis", "api", "--workers", "2", "--port", str(port))
    await asyncio.to_thread(sup.wait_ready, lambda: http_ok(f"{base}/healthz"), 30)
    kids = children(sup, 2)
    assert len(kids) == 2
    worker = api_only._start("worker", "worker", "--processes", "1")
    await asyncio.to_thread(worker.wait_for_log, '"worker_started"', 20)
    upstream.add("sup_api", Scenario(pieces=["a ", "b ", "c"], delay_s=0.01))
    # New connections spread over both processes; each serves the whole API.
    async with asyncio.timeout(30):
        for _ in range(6):
            async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                events = await collect(c, await submit(c, model="sup_api"), within=20)
                assert_well_formed(events)
                assert texts(events) == "a b c"
    assert all(k.is_running() for k in kids)
    sup.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(sup.wait, 20) == 0
    assert not http_ok(f"{base}/healthz")
