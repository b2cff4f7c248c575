"""The fault matrix: every phase of a job x every fault, on one Redis and on split queue and
streams Redis. Each cell runs a real job through real API and worker processes whose every
Redis connection passes a RESP-aware proxy (tests.support.faultproxy); the proxy stops the
worker exactly at the phase's command, the fault happens there, and then:

- the stream ends with exactly one ``end``, within the bound the README states for the fault;
- every listener (each resuming with Last-Event-ID through the fault) got exactly the stored
  events, and ``GET /v1/jobs/{id}`` agrees with the stream (text, status, last event id);
- the way it ended is the one the README promises for that fault and phase.

The rows are printed at the end of the run (``tests/conftest.py``'s terminal summary).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.helpers import assert_well_formed, collect, follow_resilient, submit, texts
from tests.support.faultproxy import Action, Command, FaultProxy, Trigger
from tests.support.report import MATRIX_ROWS
from tests.support.servers import RedisServer
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.store.events import APPEND_LUA
from tokenrelay.store.jobs import CLAIM_LUA
from tokenrelay.store.queue import TAKE_LUA

PHASES = ("queued", "taken", "claimed", "mid_stream", "final_batch", "after_end")
FAULTS = ("sigkill", "conn_cut", "redis_restart", "outage", "maxmemory", "lost_reply", "pubsub")

LEASE_TTL_S = 1.5
WRITE_RETRY_S = 2.0
REDIS_TIMEOUT_S = 1.0
OUTAGE_S = WRITE_RETRY_S + 1.5  # longer than the write retry budget
PIECES = 12
DELAY_S = 0.02
# The README's bounds, from the fault (or from Redis being back) to the stream's end, plus 2 s
# of slack for a loaded 2-core machine.
SLACK_S = 2.0
BOUND_S = {
    "sigkill": LEASE_TTL_S + 1.0 + SLACK_S,  # lease TTL + a reap interval
    "outage": OUTAGE_S + LEASE_TTL_S + 2.0 + SLACK_S,  # back, then the reapers' grace, a reap
    "default": 2 * REDIS_TIMEOUT_S + SLACK_S,
}


def sha(lua: str) -> bytes:
    return hashlib.sha1(lua.encode()).hexdigest().encode()


TAKE, CLAIM, APPEND = sha(TAKE_LUA), sha(CLAIM_LUA), sha(APPEND_LUA)


def script(
    digest: bytes, also: Callable[[Command], bool] = lambda c: True
) -> Callable[[Command], bool]:
    return lambda c: c.name == "EVALSHA" and c.args[1] == digest and also(c)


@dataclass(frozen=True)
class Phase:
    """Where a phase is: the command that starts (or completes) it, on which Redis, and
    whether the fault comes before that command reaches Redis or after Redis applied it."""

    on: str  # "queue" or "streams"
    match: Callable[[Command], bool]
    applied: bool


def phase_point(phase: str, split: bool) -> Phase:
    if phase == "queued":
        return Phase("queue", script(TAKE), applied=False)
    if phase == "taken":
        # One Redis: the take claims in the same call, so "taken" is its reply lost in flight.
        if split:
            return Phase("streams", script(CLAIM), applied=False)
        return Phase("queue", script(TAKE), applied=True)
    if phase == "claimed":
        return Phase("streams", script(APPEND, lambda c: b"start" in c.args), applied=False)
    if phase == "mid_stream":
        return Phase("streams", script(APPEND, lambda c: c.mentions(b'"index":5,')), applied=False)
    if phase == "final_batch":
        return Phase("streams", script(APPEND, lambda c: b"end" in c.args), applied=True)
    assert phase == "after_end"  # the job's queue records and lease released
    return Phase("queue", lambda c: c.name == "ZREM" and c.args[1] == b"tr:leases", applied=True)


def expected_end(fault: str, phase: str, split: bool) -> set[str]:
    """How the stream may end: finish reasons, ``error:<type>`` for errors (README table)."""
    ended_before = phase in ("final_batch", "after_end")
    if fault == "sigkill":
        if phase == "queued" or ended_before or (phase == "taken" and split):
            return {"stop"}  # not claimed yet: handed back and run again; or already ended
        return {"error:worker_lost"}
    if fault == "pubsub":
        if phase == "queued":
            return {"stop"}  # the lost message is the wake-up: the poll finds the job
        return {"stop"} if ended_before else {"cancelled"}
    if fault == "outage":
        if ended_before:
            return {"stop"}
        # Ends once Redis is back: by the worker if its last try got through, else a reaper;
        # or, if the job needed no write during the outage, normally.
        return {"stop", "error:store_unavailable", "error:worker_lost"}
    return {"stop"}  # cut, restart, maxmemory, lost reply: retried, exactly once


@dataclass
class Rig:
    """Redis server(s) behind proxies, and the relay processes on them."""

    split: bool
    servers: dict[str, RedisServer]
    proxies: dict[str, FaultProxy]
    system: RelaySystem

    def worker(self) -> int:
        return len(self.system.workers) - 1

    async def kill_worker(self) -> None:
        proc = self.system.workers[-1]
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)

    async def restart(self, which: str) -> None:
        server = self.servers[which]
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)

    async def config(self, which: str, name: str, value: str) -> None:
        client = aioredis.Redis(port=self.servers[which].port)
        try:
            await client.config_set(name, value)
        finally:
            await client.aclose()


@asynccontextmanager
async def rig(tmp_path: Path, upstream: UpstreamServer, split: bool) -> AsyncIterator[Rig]:
    names = ("queue", "streams") if split else ("queue",)
    servers = {name: RedisServer(tmp_path / name, appendonly=True) for name in names}
    proxies: dict[str, FaultProxy] = {}
    try:
        for name, server in servers.items():
            await asyncio.to_thread(server.start)
            # Loaded beforehand, so a command the proxy stops is one Redis runs, not a
            # NOSCRIPT (the workers load them again after the restart cells).
            control = aioredis.Redis(port=server.port)
            for lua in (TAKE_LUA, CLAIM_LUA, APPEND_LUA):
                await control.script_load(lua)
            await control.aclose()
            proxies[name] = FaultProxy(server.port)
            await proxies[name].start()
        if not split:
            servers["streams"], proxies["streams"] = servers["queue"], proxies["queue"]
        env = system_env(
            upstream,
            TOKENRELAY_LEASE_TTL_S=str(LEASE_TTL_S),
            TOKENRELAY_WRITE_RETRY_S=str(WRITE_RETRY_S),
            TOKENRELAY_REDIS_TIMEOUT_S=str(REDIS_TIMEOUT_S),
            TOKENRELAY_QUEUE_POLL_S="0.5",
            TOKENRELAY_SHUTDOWN_GRACE_S="1",
        )
        if split:
            env["TOKENRELAY_QUEUE_URL"] = proxies["queue"].url()
            env["TOKENRELAY_STREAMS_URL"] = proxies["streams"].url()
        # Started in a thread: the proxies serve the processes' connections on this loop.
        started = relay_system(tmp_path / "sys", proxies["queue"].url(), env)
        system = await asyncio.to_thread(started.__enter__)
        try:
            yield Rig(split, servers, proxies, system)
        finally:
            await asyncio.to_thread(started.__exit__, None, None, None)
    finally:
        for proxy in set(proxies.values()):
            await proxy.aclose()
        for server in set(servers.values()):
            await asyncio.to_thread(server.stop)


async def inject(
    r: Rig, c: httpx.AsyncClient, fault: str, at: Phase, trigger: Trigger, job: str
) -> None:
    """The fault, while the phase's command is held (or just after it was applied)."""
    if fault == "sigkill":
        await r.kill_worker()
        await trigger.release(False)
        await asyncio.to_thread(r.system.start_worker)
    elif fault == "conn_cut":
        await trigger.release(False)
    elif fault == "redis_restart":
        await r.restart(at.on)
        await trigger.release(False)
    elif fault == "outage":
        proxy = r.proxies[at.on]
        await proxy.set_down(True)
        await trigger.release(False)
        await asyncio.sleep(OUTAGE_S)
        await proxy.set_down(False)
    elif fault == "maxmemory":
        await r.config(at.on, "maxmemory", "1")
        await trigger.release(True)
        await asyncio.sleep(1.0)
        await r.config(at.on, "maxmemory", "0")
    elif fault == "pubsub":
        r.proxies["queue"].drop_pushes(True)
        response = await c.post(f"/v1/jobs/{job}/cancel")
        assert response.status_code in (200, 202), response.text
        await trigger.release(True)
        await asyncio.sleep(1.0)
        r.proxies["queue"].drop_pushes(False)
    else:  # lost_reply: the proxy forwarded the command and black-holed the connection
        pass


async def run_cell(
    r: Rig, c: httpx.AsyncClient, upstream: UpstreamServer, fault: str, phase: str
) -> dict[str, object]:
    model = f"fm-{fault}-{phase}-{'split' if r.split else 'one'}"
    upstream.add(model, Scenario(pieces=[f"{i}:{model} " for i in range(PIECES)], delay_s=DELAY_S))
    at = phase_point(phase, r.split)
    proxy = r.proxies[at.on]
    action: Action = "hold_reply" if at.applied else "hold"
    if fault == "lost_reply":
        action = "lose_reply"
    wake_lost = fault == "pubsub" and phase == "queued"
    if wake_lost:
        r.proxies["queue"].drop_pushes(True)
        trigger = None
    else:
        trigger = proxy.arm(at.match, action)
    job_id = await submit(c, model=model)
    listeners = [
        asyncio.create_task(follow_resilient(c, job_id, within=60, max_reconnects=1000))
        for _ in range(2)
    ]
    faulted = time.monotonic()
    if trigger is not None:
        await trigger.wait(within=15)
        faulted = time.monotonic()
        await inject(r, c, fault, at, trigger, job_id)
    else:
        await asyncio.sleep(1.0)
        r.proxies["queue"].drop_pushes(False)
    results = await asyncio.gather(*listeners)
    took = time.monotonic() - faulted
    truth = await collect(c, job_id, within=30)
    if [e.type for e in truth] != ["end"]:  # a job cancelled while queued never started
        assert_well_formed(truth)
    for events, _ in results:
        assert events == truth, f"{fault}/{phase}: a listener's events differ from the stream"
    job = (await c.get(f"/v1/jobs/{job_id}")).json()
    assert job["text"] == texts(truth), f"{fault}/{phase}: GET's text differs from the stream"
    assert job["last_event_id"] == truth[-1].id
    end = truth[-1].data["finish_reason"]
    status = {"stop": "succeeded", "cancelled": "cancelled", "error": "failed"}[end]
    assert job["status"] == status, (job["status"], end)
    errors = [e.data["type"] for e in truth if e.type == "error"]
    outcome = f"error:{errors[-1]}" if end == "error" else end
    allowed = expected_end(fault, phase, r.split)
    assert outcome in allowed, f"{fault}/{phase}: ended {outcome}, expected one of {allowed}"
    if outcome == "stop":
        assert texts(truth) == "".join(f"{i}:{model} " for i in range(PIECES))
    if fault == "outage":
        bound = BOUND_S["outage"]
    else:
        bound = BOUND_S.get(fault, BOUND_S["default"])
    assert took <= bound, f"{fault}/{phase}: the stream ended {took:.1f} s after the fault"
    reconnects = sum(n for _, n in results)
    return {
        "topology": "split" if r.split else "one",
        "fault": fault,
        "phase": phase,
        "outcome": outcome,
        "seconds": round(took, 2),
        "events": len(truth) * (1 + len(results)),
        "reconnects": reconnects,
    }


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("topology", ["one", "split"])
async def test_fault_matrix(
    tmp_path: Path, upstream: UpstreamServer, topology: str, fault: str
) -> None:
    async with rig(tmp_path, upstream, split=topology == "split") as r:
        async with httpx.AsyncClient(base_url=r.system.base_url, timeout=10) as c:
            for phase in PHASES:
                try:
                    row = await run_cell(r, c, upstream, fault, phase)
                except BaseException:
                    print(r.system.logs()[-6000:])
                    raise
                MATRIX_ROWS.append(row)
        for proxy in set(r.proxies.values()):
            assert not proxy.errors, proxy.errors
