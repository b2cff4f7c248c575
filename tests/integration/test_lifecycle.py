"""Failures, cancel, idempotency, auth, retention, wake-up and logs, over real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.helpers import assert_well_formed, collect, submit, texts, wait_status
from tests.support.system import UPSTREAM_SECRET, RelaySystem, relay_system, system_env
from tests.upstream_server import SCENARIOS, Scenario, UpstreamServer
from tokenrelay.keys import events_key, job_key, job_keys


@pytest.fixture
async def client(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
        yield c


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_a_running_job_closes_the_upstream_and_ends_cancelled(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("cancel_me", Scenario(pieces=[f"c{i} " for i in range(200)], delay_s=0.05))
    job_id = await submit(client, model="cancel_me")
    listener = asyncio.create_task(collect(client, job_id))
    job = await wait_status(client, job_id, "running")
    await asyncio.sleep(0.3)  # some deltas out
    t0 = time.monotonic()
    response = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["id"] == job_id
    events = await listener
    assert time.monotonic() - t0 < 1.0, "the stream ends within a second of the cancel"
    assert_well_formed(events)
    assert events[-1].data == {"finish_reason": "cancelled"}
    assert upstream.wait_for_disconnect("cancel_me", timeout=1.0)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "cancelled" and job["finish_reason"] == "cancelled"
    assert job["text"] == texts(events) and job["text"].startswith("c0 c1 ")
    # Cancelling again, once finished, answers 200 with the job unchanged.
    again = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200
    assert again.json() == job


async def test_cancel_a_finished_job_is_200_unchanged(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, model="hello")
    await collect(client, job_id)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    response = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json() == job
    assert await collect(client, job_id) == await collect(client, job_id)


# --- a system whose worker starts later: queued jobs -----------------------------------------


@pytest.fixture
def idle_system(tmp_path: Path, redis_db: str, upstream: UpstreamServer) -> Iterator[RelaySystem]:
    """An API with no worker yet; tests start one when they want."""
    env = system_env(upstream, TOKENRELAY_STREAM_TTL_S="2", TOKENRELAY_QUEUE_POLL_S="30")
    with relay_system(tmp_path, redis_db, env, workers=0) as sys_:
        yield sys_


async def test_queued_job_events_arrive_when_it_starts_and_start_is_prompt(
    idle_system: RelaySystem,
) -> None:
    async with httpx.AsyncClient(base_url=idle_system.base_url, timeout=10) as c:
        job_id = await submit(c, model="hello")
        listener = asyncio.create_task(collect(c, job_id, within=30))
        await asyncio.sleep(0.5)
        assert not listener.done(), "the connection stays open while the job is queued"
        assert (await c.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"
        await asyncio.to_thread(idle_system.start_worker)
        events = await listener
        assert_well_formed(events)
        assert texts(events) == "".join(SCENARIOS["hello"].pieces)
        # With the queue polled only every 30 s, a job can start at once only by the wake-up.
        t0 = time.monotonic()
        job_id = await submit(c, model="hello")
        await collect(c, job_id)
        assert time.monotonic() - t0 < 5


async def test_a_submit_writes_what_arq_reads(idle_system: RelaySystem) -> None:
    from arq.connections import RedisSettings, create_pool
    from arq.jobs import Job, JobStatus

    async with httpx.AsyncClient(base_url=idle_system.base_url, timeout=10) as c:
        job_id = await submit(c, model="hello")
    pool = await create_pool(RedisSettings.from_dsn(idle_system.redis_url))
    try:
        job = Job(job_id, pool)
        assert await job.status() == JobStatus.queued
        info = await job.info()
        assert info is not None
        assert (info.function, info.args, info.kwargs) == ("generate", (job_id,), {})
    finally:
        await pool.aclose()


async def test_cancel_a_queued_job_and_the_worker_skips_it(idle_system: RelaySystem) -> None:
    async with httpx.AsyncClient(base_url=idle_system.base_url, timeout=10) as c:
        job_id = await submit(c, model="hello")
        response = await c.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 202
        assert response.json()["status"] == "cancelled"
        events = await collect(c, job_id)
        assert [e.type for e in events] == ["end"]
        assert events[0].data == {"finish_reason": "cancelled"}
        await asyncio.to_thread(idle_system.start_worker)
        second = await submit(c, model="hello")  # proves the worker has polled the queue
        await collect(c, second)
        assert await collect(c, job_id) == events, "the worker did not run the cancelled job"


async def test_finished_job_expires_after_the_stream_ttl(idle_system: RelaySystem) -> None:
    await asyncio.to_thread(idle_system.start_worker)
    async with httpx.AsyncClient(base_url=idle_system.base_url, timeout=10) as c:
        job_id = await submit(c, model="hello")
        events = await collect(c, job_id)
        r = aioredis.Redis.from_url(idle_system.redis_url)
        try:
            ttls = [await r.ttl(k) for k in job_keys(job_id)]
            assert all(0 < t <= 2 for t in ttls), ttls
            await asyncio.sleep(2.5)  # past the 2 s TTL
            assert not await r.exists(events_key(job_id), job_key(job_id))
        finally:
            await r.aclose()
        assert (await c.get(f"/v1/jobs/{job_id}")).status_code == 404
        response = await c.get(f"/v1/jobs/{job_id}/events", params={"after": events[0].id})
        assert response.status_code == 404


async def test_unfinished_jobs_keys_never_live_forever(
    client: httpx.AsyncClient, system: RelaySystem
) -> None:
    job_id = await submit(client, model="slow")
    await wait_status(client, job_id, "running")
    await asyncio.sleep(0.2)
    r = aioredis.Redis.from_url(system.redis_url)
    try:
        for key in job_keys(job_id):
            assert await r.ttl(key) > 3600, key
    finally:
        await r.aclose()
    await client.post(f"/v1/jobs/{job_id}/cancel")
    await collect(client, job_id)


# --- idempotency and auth --------------------------------------------------------------------


async def test_idempotency_key_same_body_same_job_other_body_409(client: httpx.AsyncClient) -> None:
    body = {"model": "hello", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Idempotency-Key": f"k-{time.time_ns()}"}
    first = await client.post("/v1/jobs", json=body, headers=headers)
    again = await client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = await client.post("/v1/jobs", json={**body, "model": "long"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["param"] == "Idempotency-Key"
    fresh = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "another"})
    assert fresh.status_code in (200, 202) and fresh.json()["id"] != first.json()["id"]


async def test_bearer_keys_and_jobs_belong_to_their_key(
    tmp_path: Path, redis_db: str, upstream: UpstreamServer
) -> None:
    env = system_env(upstream, TOKENRELAY_API_KEYS="key-alpha,key-beta")
    with relay_system(tmp_path, redis_db, env) as sys_:
        async with httpx.AsyncClient(base_url=sys_.base_url, timeout=10) as anon:
            response = await anon.post("/v1/jobs", json={"model": "hello", "prompt": "hi"})
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
            bad = await anon.get("/v1/jobs/x", headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401
        alpha = httpx.AsyncClient(
            base_url=sys_.base_url, timeout=10, headers={"Authorization": "Bearer key-alpha"}
        )
        beta = httpx.AsyncClient(
            base_url=sys_.base_url, timeout=10, headers={"Authorization": "Bearer key-beta"}
        )
        async with alpha, beta:
            job_id = await submit(alpha, model="hello")
            events = await collect(alpha, job_id)
            assert_well_formed(events)
            for response in [
                await beta.get(f"/v1/jobs/{job_id}"),
                await beta.get(f"/v1/jobs/{job_id}/events"),
                await beta.post(f"/v1/jobs/{job_id}/cancel"),
            ]:
                assert response.status_code == 404
        logs = sys_.logs()
    assert "key-alpha" not in logs and "key-beta" not in logs


# --- bad input: a first battery (the full one lives with the reliability work) ----------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "m"}, 422, None),
        ({"model": "m", "prompt": "p", "messages": [{"role": "user", "content": "c"}]}, 422, None),
        ({"upstream": "nope", "model": "m", "prompt": "p"}, 422, "upstream"),
        ({"upstream": "sse", "messages": [{"role": "user", "content": "c"}]}, 422, "messages"),
        ({"model": "m", "prompt": 5}, 422, "prompt"),
        (
            {"model": "m", "prompt": "p", "options": {"temperature": "hot"}},
            422,
            "options.temperature",
        ),
        ({"model": "m", "prompt": "p", "options": {"stop": [""]}}, 422, "options.stop"),
        ({"model": "m", "prompt": "p", "surprise": 1}, 422, "surprise"),
        ({"model": "m", "messages": []}, 422, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "c"}]}, 422, None),
    ],
)
async def test_bad_job_bodies_get_a_json_4xx(
    client: httpx.AsyncClient, body: dict[str, object], status: int, param: str | None
) -> None:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"}
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in response.text


async def test_malformed_json_too_large_and_wrong_method(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    big = b'{"model": "m", "prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = await client.post(
        "/v1/jobs", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    response = await client.delete("/v1/jobs")
    assert response.status_code == 405
    assert "error" in response.json()
    assert (await client.get("/healthz")).status_code == 200


# --- logs: job_id bound, no prompt or output text, no keys -----------------------------------


async def test_logs_carry_job_id_but_no_text_or_secrets(
    client: httpx.AsyncClient, system: RelaySystem, upstream: UpstreamServer
) -> None:
    secret_prompt = "PROMPT-SECRET-7f3a"
    upstream.add("logcheck", Scenario(pieces=["OUTPUT-SECRET-", "91c2"]))
    job_id = await submit(
        client, model="logcheck", messages=[{"role": "user", "content": secret_prompt}]
    )
    await collect(client, job_id)
    await asyncio.sleep(0.2)
    finished = [
        e
        for e in system.log_events("worker0")
        if e.get("event") == "job_finished" and e.get("job_id") == job_id
    ]
    assert len(finished) == 1
    assert finished[0]["upstream"] == "openai" and finished[0]["attempt"] == 1
    logs = system.logs()
    for secret in (secret_prompt, "OUTPUT-SECRET-", UPSTREAM_SECRET):
        assert secret not in logs
