"""/healthz, /readyz and /metrics, scraped from a real API over a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import collect, submit
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer


@pytest.fixture
async def client(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
        yield c


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_jobs_errors_deltas_and_listeners(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = samples((await client.get("/metrics")).text)
    ok = await submit(client, model="hello")
    await collect(client, ok)
    failed = await submit(client, upstream="ollama", model="error_mid")
    await collect(client, failed)
    upstream.add("metrics-slow", Scenario(pieces=[f"m{i} " for i in range(40)], delay_s=0.05))
    slow = await submit(client, model="metrics-slow")
    listeners = [asyncio.create_task(collect(client, slow)) for _ in range(3)]
    await asyncio.sleep(0.6)
    during = samples((await client.get("/metrics")).text)
    assert value(during, "tokenrelay_listeners") >= 3
    assert value(during, "tokenrelay_active_streams") >= 1
    assert value(during, "tokenrelay_running_jobs") >= 1
    assert value(during, "tokenrelay_workers_alive") >= 1
    await asyncio.gather(*listeners)
    await asyncio.sleep(0.3)
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def grew(name: str, by: float, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) >= by, (name, labels)

    grew("tokenrelay_jobs_total", 2, status="succeeded", upstream="openai")
    grew("tokenrelay_jobs_total", 1, status="failed", upstream="ollama")
    grew("tokenrelay_upstream_errors_total", 1, type="upstream_error", upstream="ollama")
    grew("tokenrelay_deltas_published_total", 5 + 40, upstream="openai")
    grew("tokenrelay_ttft_seconds_count", 2, upstream="openai")
    grew("tokenrelay_job_duration_seconds_count", 2, upstream="openai")
    assert value(after, "tokenrelay_ttft_seconds_bucket", upstream="openai", le="+Inf") == value(
        after, "tokenrelay_ttft_seconds_count", upstream="openai"
    )
    assert "tokenrelay_queue_depth" in response.text


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1


async def test_readyz_is_503_without_a_worker(
    tmp_path: Path, redis_db: str, upstream: UpstreamServer
) -> None:
    with relay_system(tmp_path, redis_db, system_env(upstream), workers=0) as system:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
            assert (await c.get("/healthz")).status_code == 200
            response = await c.get("/readyz")
            assert response.status_code == 503
            assert response.json()["error"]["message"] == "no worker is alive"
            await asyncio.to_thread(system.start_worker)
            for _ in range(50):  # the first heartbeat comes within two seconds
                if (await c.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("readyz never turned ready")
