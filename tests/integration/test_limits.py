"""Limits: prompt size, per-key rate, queue depth, events per job, slow consumers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import assert_well_formed, collect, submit, texts
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer


@pytest.fixture
def limited(tmp_path: Path, redis_db: str, upstream: UpstreamServer) -> Iterator[RelaySystem]:
    env = system_env(
        upstream,
        TOKENRELAY_API_KEYS="key-a,key-b",
        TOKENRELAY_RATE_LIMIT_PER_MIN="4",
        TOKENRELAY_MAX_QUEUE_DEPTH="3",
        TOKENRELAY_MAX_PROMPT_CHARS="100",
        TOKENRELAY_MAX_EVENTS_PER_JOB="20",
    )
    with relay_system(tmp_path, redis_db, env, workers=0) as system:
        yield system


def client_for(system: RelaySystem, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=system.base_url, timeout=10, headers={"Authorization": f"Bearer {key}"}
    )


async def test_prompt_over_the_limit_is_413(limited: RelaySystem) -> None:
    async with client_for(limited, "key-a") as c:
        response = await c.post("/v1/jobs", json={"model": "m", "prompt": "x" * 101})
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"
        long_chat = [{"role": "user", "content": "y" * 60}, {"role": "user", "content": "z" * 60}]
        response = await c.post("/v1/jobs", json={"model": "m", "messages": long_chat})
        assert response.status_code == 413


async def test_queue_depth_503_and_rate_limit_429_per_key(limited: RelaySystem) -> None:
    async with client_for(limited, "key-a") as a, client_for(limited, "key-b") as b:
        # No worker runs: jobs stay queued. Three fill the queue; the fourth is turned away.
        for _ in range(3):
            await submit(a, model="hello")
        full = await b.post("/v1/jobs", json={"model": "hello", "prompt": "hi"})
        assert full.status_code == 503
        assert full.headers["retry-after"] == "1"
        assert full.json()["error"]["type"] == "service_unavailable"
        # key-a has used 3 + this one = 4 of its 4 a minute (503s count too); the next is 429.
        await a.post("/v1/jobs", json={"model": "hello", "prompt": "hi"})
        limited_response = await a.post("/v1/jobs", json={"model": "hello", "prompt": "hi"})
        assert limited_response.status_code == 429
        assert 1 <= int(limited_response.headers["retry-after"]) <= 61
        assert limited_response.json()["error"]["type"] == "rate_limit_error"
        # Another key has its own budget (and still meets the full queue).
        assert (
            await b.post("/v1/jobs", json={"model": "hello", "prompt": "hi"})
        ).status_code == 503
        assert (await a.get("/healthz")).status_code == 200


async def test_a_job_past_the_event_limit_ends_as_length(
    limited: RelaySystem, upstream: UpstreamServer
) -> None:
    await asyncio.to_thread(limited.start_worker)
    upstream.add("chatty", Scenario(pieces=[f"c{i} " for i in range(100)]))
    async with client_for(limited, "key-b") as c:
        job_id = await submit(c, model="chatty")
        events = await collect(c, job_id)
        assert_well_formed(events)
        assert events[-1].data == {"finish_reason": "length"}
        assert texts(events) == "".join(f"c{i} " for i in range(20))
        assert len(events) <= 20 + 3


async def test_a_consumer_that_stops_reading_slows_no_one(
    system: RelaySystem, upstream: UpstreamServer
) -> None:
    """A listener that never reads fills its socket; the worker and others carry on."""
    pieces = [f"{i:05d}" + "x" * 2000 for i in range(300)]  # 600 KB: more than socket buffers
    upstream.add("bulky", Scenario(pieces=pieces, delay_s=0.001))
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
        job_id = await submit(c, model="bulky")
        port = int(system.base_url.rsplit(":", 1)[1])
        stuck = socket.create_connection(("127.0.0.1", port))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            async with asyncio.timeout(20):
                events = await collect(c, job_id, within=20)
            assert_well_formed(events)
            assert texts(events) == "".join(pieces)
            job = (await c.get(f"/v1/jobs/{job_id}")).json()
            assert job["status"] == "succeeded"
        finally:
            stuck.close()
