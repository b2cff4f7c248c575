"""``Idempotency-Key`` under concurrency, through a real API: one key and body give one real job
(or a retryable error), never the id of a job that does not exist."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from api.auth import ANONYMOUS
from api.schemas import JobRequest
from tests.integration.helpers import submit
from tests.support.servers import RedisDatabases, RedisServer
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import UpstreamServer
from tokenrelay.store.idempotency import Held, IdempotencyStore, fingerprint

PAIRS = 30


@pytest.fixture(scope="module")
def plain(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API and a worker on a database of their own."""
    workdir = tmp_path_factory.mktemp("idem")
    with redis_dbs.database() as url, relay_system(workdir, url, system_env(upstream)) as system:
        yield system


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API that takes one job a minute from a key."""
    env = system_env(upstream, TOKENRELAY_RATE_LIMIT_PER_MIN="1")
    workdir = tmp_path_factory.mktemp("idem_limited")
    with redis_dbs.database() as url, relay_system(workdir, url, env, workers=0) as system:
        yield system


@pytest.fixture(scope="module")
def split(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API whose queue and streams live apart (two databases of a Valkey of its own): the
    key must live where the enqueue's MULTI/EXEC runs, the queue."""
    server = RedisServer(tmp_path_factory.mktemp("idem_split_valkey"))
    server.start()
    databases = RedisDatabases(server.url)
    env = system_env(
        upstream, TOKENRELAY_QUEUE_URL=databases.take(), TOKENRELAY_STREAMS_URL=databases.take()
    )
    try:
        with relay_system(
            tmp_path_factory.mktemp("idem_split"), server.url, env, workers=0
        ) as system:
            yield system
    finally:
        server.stop()


@pytest.fixture
async def client(plain: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=plain.base_url, timeout=10) as c:
        yield c


@pytest.fixture
async def store(plain: RelaySystem) -> AsyncIterator[IdempotencyStore]:
    """The API's store of keys, on the same Redis, to plant a claim as another request would."""
    redis = aioredis.Redis.from_url(plain.redis_url)
    try:
        yield IdempotencyStore(redis, ttl_s=3600)
    finally:
        await redis.aclose()


def job_body(i: int | str) -> dict[str, Any]:
    return {"model": "hello", "messages": [{"role": "user", "content": f"idem {i}"}]}


async def post(client: httpx.AsyncClient, body: dict[str, Any], key: str) -> httpx.Response:
    """Submit with ``key``; a job it names must exist the moment the answer comes."""
    response = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    if response.status_code in (200, 202):
        assert await exists(client, response.json()["id"]), ("a phantom job", response.json())
    return response


async def exists(client: httpx.AsyncClient, job_id: str) -> bool:
    return (await client.get(f"/v1/jobs/{job_id}")).status_code == 200


async def listed(client: httpx.AsyncClient) -> set[str]:
    page = (await client.get("/v1/jobs", params={"limit": 100})).json()["data"]
    assert len(page) < 100, "more jobs than one page holds"
    return {job["id"] for job in page}


def retryable(response: httpx.Response) -> bool:
    """A 429 (rate limit) or a 409 saying the key is still in use, both with Retry-After."""
    error = response.json()["error"]
    if response.status_code == 429:
        return error["type"] == "rate_limit_error" and "retry-after" in response.headers
    return (
        response.status_code == 409
        and error["param"] == "Idempotency-Key"
        and "retry" in error["message"]
        and response.headers.get("retry-after") == "1"
    )


async def test_concurrent_pairs_while_the_first_fails_never_name_a_phantom_job(
    limited: RelaySystem,
) -> None:
    async with httpx.AsyncClient(base_url=limited.base_url, timeout=10) as c, asyncio.timeout(60):
        while (await c.post("/v1/jobs", json=job_body("use up"))).status_code != 429:
            pass  # use up this minute's allowance: from now on a submit fails (429)
        tag = time.time_ns()
        answers: list[httpx.Response] = []
        for i in range(PAIRS):
            body, key = job_body(i), f"phantom-{tag}-{i}"
            answers += await asyncio.gather(post(c, body, key), post(c, body, key))
        statuses = [a.status_code for a in answers]
        for answer in answers:
            if answer.status_code in (200, 202):  # a new minute began: a real job is fine
                assert await exists(c, answer.json()["id"]), answer.json()
            else:
                assert retryable(answer), (answer.status_code, answer.headers, answer.json())
        assert statuses.count(429) >= PAIRS, statuses


async def test_concurrent_pairs_get_one_job_between_them(client: httpx.AsyncClient) -> None:
    before = await listed(client)
    tag = time.time_ns()
    ids = set()
    for i in range(PAIRS):
        body, key = job_body(i), f"pair-{tag}-{i}"
        first, second = await asyncio.gather(post(client, body, key), post(client, body, key))
        assert sorted([first.status_code, second.status_code]) == [200, 202], (
            first.json(),
            second.json(),
        )
        assert first.json()["id"] == second.json()["id"]
        assert await exists(client, first.json()["id"])
        ids.add(first.json()["id"])
    assert len(ids) == PAIRS
    assert await listed(client) - before == ids  # exactly one job a key, and no other


async def test_the_key_lives_on_the_queue_redis_when_the_streams_live_apart(
    split: RelaySystem,
) -> None:
    queue = aioredis.Redis.from_url(split.env["TOKENRELAY_QUEUE_URL"])
    streams = aioredis.Redis.from_url(split.env["TOKENRELAY_STREAMS_URL"])
    async with httpx.AsyncClient(base_url=split.base_url, timeout=10) as c:
        try:
            for i in range(10):
                body, key = job_body(i), f"split-{time.time_ns()}-{i}"
                first, second = await asyncio.gather(post(c, body, key), post(c, body, key))
                assert sorted([first.status_code, second.status_code]) == [200, 202]
                assert first.json()["id"] == second.json()["id"]
                redis_key, body_hash = planted(IdempotencyStore(queue, ttl_s=1), key, body)
                held = await IdempotencyStore(queue, ttl_s=1).lookup(redis_key)
                assert held == Held(first.json()["id"], body_hash, pending=False)
                assert await streams.exists(redis_key) == 0
        finally:
            await queue.aclose()
            await streams.aclose()


async def test_another_body_is_a_conflict_at_once(client: httpx.AsyncClient) -> None:
    key = f"other-{time.time_ns()}"
    first = await post(client, job_body("a"), key)
    assert first.status_code == 202
    other = await post(client, job_body("b"), key)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    assert "another body" in other.json()["error"]["message"]
    assert "retry-after" not in other.headers
    # Concurrent requests with one key and two bodies: one job, one conflict.
    before = await listed(client)
    key = f"other-concurrent-{time.time_ns()}"
    answers = await asyncio.gather(
        post(client, job_body("c"), key), post(client, job_body("d"), key)
    )
    assert sorted(a.status_code for a in answers) == [202, 409]
    (created,) = (a.json()["id"] for a in answers if a.status_code == 202)
    assert await listed(client) - before == {created}


async def test_a_failed_submit_frees_the_key(client: httpx.AsyncClient) -> None:
    key = f"free-{time.time_ns()}"
    failed = await post(client, {**job_body("x"), "upstream": "nowhere"}, key)
    assert failed.status_code == 422
    first = await post(client, job_body("x"), key)
    assert first.status_code == 202
    again = await post(client, job_body("x"), key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


# --- a claim held by another request, planted as that request would ----------------------------


def planted(store: IdempotencyStore, key: str, body: dict[str, Any]) -> tuple[str, str]:
    """The Redis key the API uses for ``key``, and the hash it binds ``body`` to."""
    body_hash = fingerprint(JobRequest.model_validate(body).model_dump(mode="json"))
    return store.key(ANONYMOUS, key), body_hash


async def test_a_pending_claim_is_waited_for_then_a_retryable_409(
    client: httpx.AsyncClient, store: IdempotencyStore
) -> None:
    key = f"pending-{time.time_ns()}"
    redis_key, body_hash = planted(store, key, job_body("p"))
    assert await store.claim(redis_key, "job_" + "P" * 22, body_hash) is None
    began = time.monotonic()
    answer = await post(client, job_body("p"), key)
    assert retryable(answer) and answer.status_code == 409, answer.json()
    assert time.monotonic() - began >= 1.5  # it waited for the other request first
    # Another body does not wait.
    began = time.monotonic()
    other = await post(client, job_body("q"), key)
    assert other.status_code == 409 and "another body" in other.json()["error"]["message"]
    assert time.monotonic() - began < 1.0


async def test_a_pending_claim_confirmed_meanwhile_answers_its_job(
    client: httpx.AsyncClient, store: IdempotencyStore
) -> None:
    real = await submit(client, **job_body("real"))
    key = f"confirmed-{time.time_ns()}"
    redis_key, body_hash = planted(store, key, job_body("c"))
    assert await store.claim(redis_key, real, body_hash) is None

    async def confirm_later() -> None:
        await asyncio.sleep(0.3)
        async with store.redis.pipeline(transaction=True) as pipe:
            store.confirm(pipe, redis_key, real, body_hash)
            await pipe.execute()

    answer, _ = await asyncio.gather(post(client, job_body("c"), key), confirm_later())
    assert answer.status_code == 200 and answer.json()["id"] == real


async def test_a_pending_claim_released_meanwhile_is_taken_over(
    client: httpx.AsyncClient, store: IdempotencyStore
) -> None:
    key = f"released-{time.time_ns()}"
    redis_key, body_hash = planted(store, key, job_body("r"))
    gone = "job_" + "R" * 22
    assert await store.claim(redis_key, gone, body_hash) is None

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        assert await store.release(redis_key, Held(gone, body_hash, pending=True))

    answer, _ = await asyncio.gather(post(client, job_body("r"), key), release_later())
    assert answer.status_code == 202 and answer.json()["id"] != gone
    assert await exists(client, answer.json()["id"])
    held = await store.lookup(redis_key)
    assert held == Held(answer.json()["id"], body_hash, pending=False)


async def test_a_key_naming_a_lost_job_is_not_replayed(
    client: httpx.AsyncClient, store: IdempotencyStore
) -> None:
    key = f"lost-{time.time_ns()}"
    redis_key, body_hash = planted(store, key, job_body("l"))
    lost = "job_" + "L" * 22  # as if its Redis had lost it
    await store.redis.set(redis_key, Held(lost, body_hash, pending=False).value())
    answer = await post(client, job_body("l"), key)
    assert answer.status_code == 202 and answer.json()["id"] != lost
    assert await exists(client, answer.json()["id"])
