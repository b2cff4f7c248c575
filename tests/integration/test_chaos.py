"""Chaos: many jobs, listeners that drop and resume at random, a worker killed with SIGKILL
and restarted, and Redis (append-only) restarted, all at once. Every listener must end with
exactly the job's events, every stream with one ``end``."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from tests.integration.helpers import Ev, assert_well_formed, collect, parse_sse, submit, texts
from tests.support.servers import RedisServer
from tests.support.system import relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.keys import LEASES_KEY, job_key
from tokenrelay.store.queue import QUEUE_NAME

JOBS = 12
LISTENERS_PER_JOB = 3
PIECES = 80
DELAY_S = 0.03


async def records(redis_url: str, job_id: str) -> dict[str, object]:
    """Everything Redis holds about a job's ownership: its status hash, lease and arq's
    records, for the message of a failed run."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        status = await client.hgetall(job_key(job_id))
        return {
            "status": {k: v for k, v in status.items() if k != "request"},
            "lease_deadline_ms": await client.zscore(LEASES_KEY, job_id),
            "now_ms": int(time.time() * 1000),
            "arq_queue_score": await client.zscore(QUEUE_NAME, job_id),
            "arq_in_progress": await client.get(f"arq:in-progress:{job_id}"),
            "arq_job_exists": await client.exists(f"arq:job:{job_id}"),
        }
    finally:
        await client.aclose()


async def follow_chaotic(
    client: httpx.AsyncClient,
    job_id: str,
    rng: random.Random,
    stats: Counter[str],
    redis_url: str,
) -> list[Ev]:
    """Follow the job to its end, dropping the connection after a random number of events
    (and on any error) and resuming with Last-Event-ID after a random pause."""
    events: list[Ev] = []
    try:
        return await _follow(client, job_id, rng, stats, events)
    except TimeoutError:
        raise AssertionError(
            f"listener of {job_id} hung: had {len(events)} events "
            f"(last {events[-1] if events else None}); "
            f"in Redis: {await records(redis_url, job_id)}"
        ) from None


async def _follow(
    client: httpx.AsyncClient,
    job_id: str,
    rng: random.Random,
    stats: Counter[str],
    events: list[Ev],
) -> list[Ev]:
    async with asyncio.timeout(60):
        while not events or events[-1].type != "end":
            budget = rng.randint(1, 15)
            headers = {"Last-Event-ID": events[-1].id} if events else {}
            buf = b""
            try:
                async with client.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers
                ) as response:
                    if response.status_code != 200:
                        stats["non_200"] += 1
                    else:
                        async for part in response.aiter_bytes():
                            buf += part
                            complete = buf[: buf.rfind(b"\n\n") + 2]
                            if complete:
                                got = parse_sse(complete)[0]
                                buf = buf[len(complete) :]
                                events += got
                                budget -= len(got)
                            if (events and events[-1].type == "end") or budget <= 0:
                                break
            except httpx.HTTPError:
                stats["errors"] += 1
            if events and events[-1].type == "end":
                break
            stats["reconnects"] += 1
            await asyncio.sleep(rng.uniform(0, 0.2))
    return events


async def test_chaos_every_listener_gets_exactly_the_jobs_events(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    seed = int(os.environ.get("TOKENRELAY_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    redis = RedisServer(tmp_path / "aof", appendonly=True)
    redis.start()
    stats: Counter[str] = Counter()
    try:
        env = system_env(upstream, TOKENRELAY_LEASE_TTL_S="2", TOKENRELAY_KEEPALIVE_S="1")
        with relay_system(tmp_path / "sys", redis.url, env, workers=2) as system:
            names = []
            for j in range(JOBS):
                name = f"chaos{j}"
                pieces = [f"{name}.{i} " for i in range(PIECES)]
                upstream.add(name, Scenario(pieces=pieces, delay_s=DELAY_S))
                names.append(name)
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
                job_ids = [await submit(c, model=name) for name in names]
                listeners = {
                    job_id: [
                        asyncio.create_task(follow_chaotic(c, job_id, rng, stats, redis.url))
                        for _ in range(LISTENERS_PER_JOB)
                    ]
                    for job_id in job_ids
                }
                await asyncio.sleep(0.8)
                system.workers[0].send_signal(signal.SIGKILL)
                stats["worker_kills"] += 1
                await asyncio.sleep(0.4)
                await asyncio.to_thread(system.start_worker)
                await asyncio.sleep(0.4)
                redis.stop()
                await asyncio.sleep(0.3)
                redis.start()
                stats["redis_restarts"] += 1

                outcomes: Counter[str] = Counter()
                for job_id, tasks in listeners.items():
                    results = await asyncio.gather(*tasks)
                    truth = await collect(c, job_id, within=30)
                    assert_well_formed(truth)
                    job = (await c.get(f"/v1/jobs/{job_id}")).json()
                    assert job["text"] == texts(truth)
                    assert job["last_event_id"] == truth[-1].id
                    for events in results:
                        assert events == truth, f"seed {seed}: a listener of {job_id} diverged"
                        stats["events_checked"] += len(events)
                    outcomes[truth[-1].data["finish_reason"]] += 1
                    if truth[-1].data["finish_reason"] == "error":
                        errors = [e.data["type"] for e in truth if e.type == "error"]
                        assert errors == ["worker_lost"], errors
    finally:
        redis.stop()
    print(
        f"\nchaos (seed {seed}): {JOBS} jobs x {LISTENERS_PER_JOB} listeners, "
        f"{stats['reconnects']} reconnects ({stats['errors']} after errors), "
        f"{stats['worker_kills']} worker kill, {stats['redis_restarts']} Redis restart, "
        f"{stats['events_checked']} events checked, outcomes {dict(outcomes)}"
    )
    assert stats["reconnects"] >= JOBS * LISTENERS_PER_JOB
    assert sum(outcomes.values()) == JOBS
