"""``GET /v1/jobs``: newest first, limit, paging with ``before``, one key's jobs only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import UpstreamServer
from tokenrelay.client import AsyncClient, AuthenticationError, UnprocessableEntityError
from tokenrelay.keys import job_keys, recent_jobs_key

KEY_A, KEY_B = "key-listing-alpha", "key-listing-beta"


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API and a worker with two bearer keys, on a database of their own."""
    env = system_env(upstream, TOKENRELAY_API_KEYS=f"{KEY_A},{KEY_B}")
    workdir = tmp_path_factory.mktemp("listing")
    with redis_dbs.database() as url, relay_system(workdir, url, env) as sys_:
        yield sys_


@pytest.fixture
async def alpha(keyed: RelaySystem) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(keyed.base_url, api_key=KEY_A, timeout=10) as c:
        yield c


@pytest.fixture
async def beta(keyed: RelaySystem) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(keyed.base_url, api_key=KEY_B, timeout=10) as c:
        yield c


@pytest.fixture
async def redis(keyed: RelaySystem) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(keyed.redis_url)
    try:
        yield r
    finally:
        await r.aclose()


async def submit_n(client: AsyncClient, n: int) -> list[str]:
    """``n`` jobs, one after another, so their creation times increase."""
    ids = []
    for _ in range(n):
        ids.append((await client.submit("hi", model="hello")).id)
        await asyncio.sleep(0.002)  # a later millisecond for the next
    return ids


async def every_page(client: AsyncClient, limit: int) -> list[str]:
    ids: list[str] = []
    before: str | None = None
    async with asyncio.timeout(10):
        while True:
            page = await client.jobs(limit, before=before)
            assert len(page) <= limit
            ids += [j.id for j in page]
            if not page.has_more:
                assert page.next_before is None
                return ids
            assert len(page) == limit and page.next_before is not None
            before = page.next_before


async def test_newest_first_limit_and_summary_fields(alpha: AsyncClient) -> None:
    ids = await submit_n(alpha, 4)
    page = await alpha.jobs(3)
    assert [j.id for j in page] == ids[::-1][:3]
    assert page.has_more
    for summary in page:
        async with asyncio.timeout(10):
            async for _ in alpha.stream(summary.id):
                pass
    page = await alpha.jobs(3)
    for summary in page:
        job = await alpha.get(summary.id)
        assert (summary.status, summary.upstream, summary.model) == ("succeeded", "openai", "hello")
        assert summary.created_at == job.created_at
        assert summary.finished_at == job.finished_at is not None
        assert summary.finish_reason == job.finish_reason == "stop"
        assert summary.last_event_id == job.last_event_id is not None


async def test_paging_with_before_returns_every_job_once(
    alpha: AsyncClient, redis: aioredis.Redis
) -> None:
    await submit_n(alpha, 8)
    # Jobs created in the same millisecond: give five the same score, as a burst would.
    key = recent_jobs_key(await _tenant(alpha, redis))
    newest = await redis.zrevrange(key, 0, 4, withscores=True)
    await redis.zadd(key, {member: newest[-1][1] for member, _ in newest})
    everything = [j.id for j in await alpha.jobs(100)]
    assert len(everything) == len(set(everything)) >= 7
    for limit in (1, 2, 3, 5):
        assert await every_page(alpha, limit) == everything


async def test_before_a_time_in_ms(alpha: AsyncClient) -> None:
    first = await submit_n(alpha, 2)
    await asyncio.sleep(0.01)
    mark = time.time_ns() // 1_000_000
    await asyncio.sleep(0.01)
    later = await submit_n(alpha, 2)
    page = await alpha.jobs(100, before=mark)
    listed = [j.id for j in page]
    assert listed[:2] == first[::-1]
    assert not set(later) & set(listed)
    assert len(await alpha.jobs(100, before=0)) == 0


async def test_another_keys_jobs_are_not_listed(alpha: AsyncClient, beta: AsyncClient) -> None:
    mine = await submit_n(alpha, 2)
    theirs = await submit_n(beta, 1)
    listed_b = {j.id for j in await beta.jobs(100)}
    assert set(theirs) <= listed_b and not set(mine) & listed_b
    listed_a = {j.id for j in await alpha.jobs(100)}
    assert set(mine) <= listed_a and not set(theirs) & listed_a


async def test_expired_jobs_are_skipped_and_forgotten(
    alpha: AsyncClient, redis: aioredis.Redis
) -> None:
    ids = await submit_n(alpha, 3)
    await redis.delete(*job_keys(ids[1]))  # what expiry does to a job's keys
    page = await alpha.jobs(2)
    assert [j.id for j in page] == [ids[2], ids[0]], "the page is still full"
    key = recent_jobs_key(await _tenant(alpha, redis))
    assert await redis.zscore(key, ids[1]) is None
    assert await redis.zscore(key, ids[0]) is not None


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"before": "yesterday"}, "before"),
        ({"before": "-5"}, "before"),
        ({"before": "123:not_a_job"}, "before"),
        ({"before": "\u0661\u0662\u0663"}, "before"),  # Arabic-Indic digits
        ({"before": "123\n"}, "before"),
    ],
)
async def test_bad_params_are_422_in_the_json_error_shape(
    keyed: RelaySystem, params: dict[str, str], param: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=keyed.base_url, headers=headers, timeout=10) as c:
        response = await c.get("/v1/jobs", params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_the_sdk_raises_typed_errors_without_the_key(
    alpha: AsyncClient, keyed: RelaySystem
) -> None:
    with pytest.raises(UnprocessableEntityError) as bad:
        await alpha.jobs(0)
    assert bad.value.param == "limit"
    async with AsyncClient(keyed.base_url, api_key="wrong-key-xyz", timeout=10) as wrong:
        with pytest.raises(AuthenticationError) as denied:
            await wrong.jobs()
    assert denied.value.status == 401 and "wrong-key-xyz" not in str(denied.value)
    async with AsyncClient(keyed.base_url, timeout=10) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.jobs()


async def _tenant(client: AsyncClient, redis: aioredis.Redis) -> str:
    """The tenant name the API stores with the client's jobs."""
    newest = (await client.jobs(1)).data[0].id
    tenant = await redis.hget(job_keys(newest)[1], "tenant")
    assert tenant is not None
    return str(tenant.decode())
