"""Durable Streams beyond the conformance suite: the official TypeScript and Python clients
follow a job through the protocol, drop and resume by offset; a stream is its key's; the
size limit, the retention, the long-poll wait and the read-only job streams."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from durable_streams import stream as ds_stream

from tests.integration.helpers import collect, submit
from tests.support.servers import RedisDatabases
from tests.support.system import ROOT, RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.keys import durable_keys, durable_topic

JS_DIR = ROOT / "tests" / "js" / "durable-streams"
PIECES = [f"piece{i} " for i in range(12)]
MAX_MESSAGE = 1024
RETENTION_S = 3


def offset_of(event_id: str) -> str:
    ms, seq = event_id.split("-")
    return f"{int(ms):016d}_{int(seq):016d}"


def job_url(system: RelaySystem, job_id: str) -> str:
    return f"{system.base_url}/v1/stream/jobs/{job_id}"


@pytest.fixture
async def slow_job(system: RelaySystem, upstream: UpstreamServer) -> str:
    """A job whose events come over about three seconds: a reader that stops after its first
    few is well before the end, however slowly node starts on a loaded machine."""
    upstream.add("ds-slow", Scenario(pieces=PIECES, delay_s=0.25))
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        return await submit(client, model="ds-slow")


async def events_of(system: RelaySystem, job_id: str) -> list[dict[str, Any]]:
    """The job's events as its own SSE route sends them: the reference."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        events = await collect(client, job_id)
    return [{"type": e.type, "data": e.data, "id": e.id} for e in events]


def node_follow(url: str, **env: str) -> dict[str, Any]:
    assert (JS_DIR / "node_modules" / "@durable-streams" / "client").is_dir(), "run `make js`"
    done = subprocess.run(
        ["node", "follow.mjs"],
        cwd=JS_DIR,
        env={**os.environ, "DS_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_the_typescript_client_follows_a_job_drops_and_resumes(
    system: RelaySystem, slow_job: str, live: str
) -> None:
    url = job_url(system, slow_job)
    first = await asyncio.to_thread(node_follow, url, DS_LIVE=live, DS_STOP_AFTER="3")
    assert not first["closed"] and len(first["items"]) >= 3
    rest = await asyncio.to_thread(node_follow, url, DS_LIVE=live, DS_OFFSET=first["offset"])
    assert rest["closed"]
    events = await events_of(system, slow_job)
    # Exactly the events: the first part up to its offset, the rest after it, none twice.
    assert first["items"] + rest["items"] == events
    assert first["offset"] == offset_of(first["items"][-1]["id"])
    assert rest["items"][-1]["type"] == "end"


def python_follow(url: str, offset: str | None, stop_after: int | None) -> tuple[list[Any], str]:
    """The official Python client, long-polling: items until ``stop_after`` (at a response's
    end) or the job's ``end``, and the offset after them."""
    items: list[Any] = []
    next_offset = offset or "-1"
    deadline = time.monotonic() + 20
    with ds_stream(url, offset=next_offset, live="long-poll", timeout=10) as response:
        for event in response.iter_events(mode="json_batches"):
            items += event.data
            next_offset = event.next_offset
            if (stop_after is not None and len(items) >= stop_after) or (
                items and items[-1]["type"] == "end"
            ):
                break
            assert time.monotonic() < deadline
    return items, next_offset


async def test_the_python_client_follows_a_job_drops_and_resumes(
    system: RelaySystem, slow_job: str
) -> None:
    url = job_url(system, slow_job)
    first, offset = await asyncio.to_thread(python_follow, url, None, 3)
    assert len(first) >= 3 and first[-1]["type"] != "end"
    rest, _ = await asyncio.to_thread(python_follow, url, offset, None)
    events = await events_of(system, slow_job)
    assert first + rest == events
    assert offset == offset_of(first[-1]["id"])


async def test_a_job_stream_is_read_only_and_maps_offsets_to_event_ids(
    system: RelaySystem, slow_job: str
) -> None:
    events = await events_of(system, slow_job)
    url = job_url(system, slow_job)
    async with httpx.AsyncClient(timeout=10) as client:
        for method in ("PUT", "POST", "DELETE"):
            refused = await client.request(method, url, content=b"[1]")
            assert refused.status_code == 405, method
            assert refused.headers["allow"] == "GET, HEAD"
        head = await client.head(url)
        assert head.headers["stream-next-offset"] == offset_of(events[-1]["id"])
        assert head.headers["stream-closed"] == "true"
        middle = events[4]["id"]
        page = await client.get(url, params={"offset": offset_of(middle)})
        assert page.json() == events[5:]
        assert page.headers["stream-closed"] == "true"
        unknown = await client.get(f"{system.base_url}/v1/stream/jobs/job_{'x' * 22}")
        assert unknown.status_code == 404
        named = await client.put(f"{system.base_url}/v1/stream/jobs/mine", content=b"x")
        assert named.status_code == 405


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    env = system_env(
        upstream,
        TOKENRELAY_API_KEYS="key-a,key-b",
        TOKENRELAY_STREAM_MAX_MESSAGE_BYTES=str(MAX_MESSAGE),
        TOKENRELAY_STREAM_RETENTION_S=str(RETENTION_S),
        TOKENRELAY_STREAM_LONG_POLL_S="1",
    )
    workdir: Path = tmp_path_factory.mktemp("ds_keyed")
    with redis_dbs.database() as url, relay_system(workdir, url, env, workers=0) as system:
        yield system


A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


async def test_a_stream_is_the_key_that_created_it(keyed: RelaySystem) -> None:
    path = f"/v1/stream/owned-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as client:
        anonymous = await client.put(path, content=b"x")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "authentication_error"
        plain = {"Content-Type": "text/plain"}
        assert (await client.put(path, content=b"mine", headers=A | plain)).status_code == 201
        assert (await client.get(path, headers=A)).content == b"mine"
        for method in ("GET", "HEAD", "POST", "DELETE"):
            other = await client.request(method, path, content=b"x", headers=B | plain)
            assert other.status_code == 404, method
        assert (await client.put(path, content=b"", headers=B | plain)).status_code == 409
        assert (await client.get(path, headers=A)).content == b"mine"
        fork = {"Stream-Forked-From": path}
        assert (await client.put(f"{path}-b", headers=B | fork)).status_code == 404
        assert (await client.put(f"{path}-a", headers=A | fork)).status_code == 201
        assert (await client.get(f"{path}-a", headers=A)).content == b"mine"
        # A job's stream is its key's, as the job is (no worker here: it stays queued).
        created = await client.post(
            "/v1/jobs",
            json={"model": "hello", "messages": [{"role": "user", "content": "hi"}]},
            headers=A,
        )
        job = f"/v1/stream/jobs/{created.json()['id']}"
        assert (await client.get(job, params={"offset": "-1"}, headers=A)).json() == []
        assert (await client.head(job, headers=A)).status_code == 200
        assert (await client.get(job, params={"offset": "-1"}, headers=B)).status_code == 404
        assert (await client.head(job, headers=B)).status_code == 404


async def test_a_message_over_the_limit_is_413(keyed: RelaySystem) -> None:
    path = f"/v1/stream/big-{uuid.uuid4().hex}"
    octets = A | {"Content-Type": "application/octet-stream"}
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as client:
        too_big = await client.put(path, content=b"x" * (MAX_MESSAGE + 1), headers=octets)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["message"] == f"a message is larger than {MAX_MESSAGE} bytes"
        assert (
            await client.put(path, content=b"x" * MAX_MESSAGE, headers=octets)
        ).status_code == 201
        assert (await client.post(path, content=b"y" * 2000, headers=octets)).status_code == 413
        json_path = f"{path}-json"
        as_json = A | {"Content-Type": "application/json"}
        assert (await client.put(json_path, headers=as_json)).status_code == 201
        # A batch may be larger than a message: each of its messages is checked.
        batch = json.dumps(["z" * 600, "z" * 600])
        assert (await client.post(json_path, content=batch, headers=as_json)).status_code == 204
        one = json.dumps(["z" * 1100])
        assert (await client.post(json_path, content=one, headers=as_json)).status_code == 413


async def test_a_stream_without_ttl_is_kept_for_the_retention(keyed: RelaySystem) -> None:
    name = f"kept-{uuid.uuid4().hex}"
    path = f"/v1/stream/{name}"
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as client:
        assert (await client.put(path, content=b"a", headers=A)).status_code == 201
        with redis.Redis.from_url(keyed.redis_url) as direct:
            meta, entries, _, _, _ = durable_keys(durable_topic(name))
            for key in (meta, entries):
                assert 0 < direct.pttl(key) <= RETENTION_S * 1000
        await asyncio.sleep(RETENTION_S / 2)
        assert (
            await client.post(
                path, content=b"b", headers=A | {"Content-Type": "application/octet-stream"}
            )
        ).status_code == 204
        await asyncio.sleep(RETENTION_S * 0.75)  # past the first write's retention
        assert (await client.get(path, headers=A)).content == b"ab"
        await asyncio.sleep(RETENTION_S + 0.3)
        assert (await client.get(path, headers=A)).status_code == 404


async def test_a_long_poll_waits_the_configured_time(keyed: RelaySystem) -> None:
    path = f"/v1/stream/wait-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as client:
        created = await client.put(path, headers=A)
        tail = created.headers["stream-next-offset"]
        started = time.monotonic()
        polled = await client.get(path, params={"offset": tail, "live": "long-poll"}, headers=A)
        waited = time.monotonic() - started
        assert polled.status_code == 204
        assert 0.9 <= waited < 6  # the setting's 1 s, not the default's 20
