"""Beyond one machine: two API and two worker processes, the streams on a real 3-primary Redis
Cluster, the queue on its own Redis. Listeners move between API processes mid-stream and a
worker is killed: every contract invariant still holds."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.integration.helpers import Ev, assert_well_formed, collect, parse_sse, submit, texts
from tests.support.servers import RedisClusterServers
from tests.support.system import RelaySystem, relay_system, upstreams_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.keys import events_key

JOBS = 50
PIECES = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def two_of_each(
    tmp_path: Path, redis_db: str, upstream: UpstreamServer, cluster: RedisClusterServers
) -> Iterator[tuple[RelaySystem, RelaySystem]]:
    upstreams = upstreams_env(upstream)
    upstreams["limited"] = {**upstreams["openai"], "max_concurrency": 2}
    queue = redis_db
    env = {
        "TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams).decode(),
        "TOKENRELAY_DEFAULT_UPSTREAM": "openai",
        "TOKENRELAY_QUEUE_URL": queue,
        "TOKENRELAY_STREAMS_URL": cluster.url,
        "TOKENRELAY_STREAMS_CLUSTER": "true",
        "TOKENRELAY_LEASE_TTL_S": "2",
        "TOKENRELAY_KEEPALIVE_S": "1",
    }
    with (
        relay_system(tmp_path / "a", queue, env) as a,
        relay_system(tmp_path / "b", queue, env) as b,
    ):
        yield a, b


async def read_then_switch(
    first: httpx.AsyncClient, second: httpx.AsyncClient, job_id: str, n: int
) -> list[Ev]:
    """Read ``n`` events from one API process, drop, resume on the other with Last-Event-ID."""
    events: list[Ev] = []
    buf = b""
    async with first.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        async for part in response.aiter_bytes():
            buf += part
            complete = buf[: buf.rfind(b"\n\n") + 2]
            if complete.count(b"\n\n") >= n or (
                complete and parse_sse(complete)[0][-1].type == "end"
            ):
                events = parse_sse(complete)[0]
                break
    if events and events[-1].type == "end":
        return events
    return events + await collect(second, job_id, last_event_id=events[-1].id if events else None)


async def test_two_apis_two_workers_on_a_cluster_keep_every_invariant(
    two_of_each: tuple[RelaySystem, RelaySystem],
    upstream: UpstreamServer,
    cluster: RedisClusterServers,
) -> None:
    a, b = two_of_each
    names = []
    for j in range(JOBS):
        name = f"cl{j}"
        upstream.add(name, Scenario(pieces=[f"{name}.{i} " for i in range(PIECES)], delay_s=0.03))
        names.append(name)
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=10) as ca,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as cb,
    ):
        job_ids = [await submit(ca if i % 2 else cb, model=name) for i, name in enumerate(names)]
        switching = [
            asyncio.create_task(read_then_switch(ca, cb, job_id, 3 + i % 7))
            for i, job_id in enumerate(job_ids)
        ]
        steady = [asyncio.create_task(collect(cb, job_id, within=60)) for job_id in job_ids]
        await asyncio.sleep(0.5)
        a.workers[0].send_signal(signal.SIGKILL)  # its jobs end with worker_lost
        async with asyncio.timeout(90):
            switched = await asyncio.gather(*switching)
            followed = await asyncio.gather(*steady)
        outcomes: Counter[str] = Counter()
        for job_id, one, two in zip(job_ids, switched, followed, strict=True):
            truth = await collect(ca, job_id)
            assert_well_formed(truth)
            assert one == truth and two == truth  # invariants 2 and 5, across processes
            job = (await cb.get(f"/v1/jobs/{job_id}")).json()
            assert job["text"] == texts(truth)  # invariant 1
            outcomes[truth[-1].data["finish_reason"]] += 1
        assert sum(outcomes.values()) == JOBS
        assert outcomes["stop"] > 0, outcomes
    # The jobs really were spread over the cluster's nodes.
    client = aioredis.RedisCluster.from_url(cluster.url)
    await client.initialize()
    try:
        nodes = {client.get_node_from_key(events_key(job_id)).name for job_id in job_ids}
    finally:
        await client.aclose()
    assert len(nodes) == 3


async def test_an_upstreams_concurrency_limit_holds_across_workers(
    two_of_each: tuple[RelaySystem, RelaySystem], upstream: UpstreamServer
) -> None:
    a, b = two_of_each
    upstream.add("slot", Scenario(pieces=[f"s{i} " for i in range(8)], delay_s=0.05))
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=10) as ca,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as cb,
    ):
        job_ids = [
            await submit(ca if i % 2 else cb, upstream="limited", model="slot") for i in range(6)
        ]
        results = await asyncio.gather(*(collect(ca, job_id, within=60) for job_id in job_ids))
    for events in results:
        assert_well_formed(events)
        assert events[-1].data == {"finish_reason": "stop"}
    assert upstream.peak("slot") == 2, "two workers, six jobs, never more than two streams"
    # Metrics are shared through the queue Redis, whichever Redis holds the streams.
    async with httpx.AsyncClient(base_url=b.base_url, timeout=10) as client:
        metrics = (await client.get("/metrics")).text
    assert 'tokenrelay_jobs_total{status="succeeded",upstream="limited"} 6.0' in metrics
