"""CPU time per unit of work, per process: the stable figure on a shared machine.

- worker CPU per published delta: one worker process runs ``--jobs`` jobs of ``--tokens``
  deltas from a fast upstream; its process CPU time (user + system) over the deltas it
  published. Beside it, from the same run: the CPU per entry of raw pipelined XADD from
  redis-py (a Python process doing nothing but publishing), the synthetic upstream's CPU per
  delta it wrote, and Valkey's. Also counts jobs wrongly ended as ``worker_lost``: under this
  load a worker must keep every lease.
- API CPU per delivered event: ``--listeners`` SSE listeners of one job on one API process,
  ``--deltas`` deltas at ``--rate``/s; the API process's CPU time (from when every listener is
  connected to the end) over the events it delivered. Beside it, the listeners' own CPU per
  event read (this process: a lean asyncio client) and Valkey's.

    .venv/bin/python ops/bench/cpu.py                  # 500 jobs, 1,000 listeners
    .venv/bin/python ops/bench/cpu.py --quick          # scaled down (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import orjson
import psutil
import redis.asyncio as aioredis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client import Conn  # noqa: E402
from run import Row, Stack, job_body, print_table, stack  # noqa: E402

from tokenrelay.keys import events_key, job_key  # noqa: E402

ENDED = (b"succeeded", b"failed", b"cancelled")


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def procs(s: Stack) -> dict[str, psutil.Process]:
    """The stack's processes by role (the first of each)."""
    out: dict[str, psutil.Process] = {}
    for child in s.group.children:
        role = child.name.rstrip("0123456789")
        out.setdefault(role, psutil.Process(child.pid))
    return out


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def submit_all(port: int, bodies: list[dict[str, object]], conns: int = 8) -> list[str]:
    """POST every body (over ``conns`` keep-alive connections); the job ids, in order."""
    ids: list[str] = [""] * len(bodies)

    async def one_conn(k: int) -> None:
        conn = await Conn.open(port)
        for i in range(k, len(bodies), conns):
            status, created = await conn.post_json("/v1/jobs", bodies[i])
            assert status == 202, created
            ids[i] = created["id"]
        conn.close()

    await asyncio.gather(*(one_conn(k) for k in range(conns)))
    return ids


async def wait_ended(r: aioredis.Redis, ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(job_key(job_id), "status")
            statuses = await pipe.execute()
        if all(st in ENDED for st in statuses):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"jobs still running after {timeout_s:g} s")


async def raw_xadd_cpu_us(r: aioredis.Redis, entries: int, keys: int) -> float:
    """CPU per entry of raw pipelined XADD from redis-py in this process (µs)."""
    payload = orjson.dumps({"index": 0, "text": "t=1795307674988000000;"})
    t0 = time.process_time()
    for start in range(0, entries, 500):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 500, entries)):
                pipe.xadd(f"raw:{i % keys}", {"t": "delta", "d": payload})
            await pipe.execute()
    took = time.process_time() - t0
    await r.delete(*[f"raw:{i}" for i in range(keys)])
    return took / entries * 1e6


async def worker_cpu(s: Stack, jobs: int, tokens: int, rate: float = 0) -> list[Row]:
    """``rate`` 0: a fast upstream (many deltas per network read); else that many deltas/s per
    job, one delta per read, as a model streaming at a human pace sends them."""
    p = procs(s)
    r = aioredis.Redis.from_url(s.redis_url)
    bodies = [job_body(tokens, rate) for _ in range(jobs)]
    before = {name: cpu_s(proc) for name, proc in p.items()}
    t0 = time.perf_counter()
    ids = await submit_all(s.api_port, bodies)
    await wait_ended(r, ids, 120 + jobs * tokens / 2000 + (tokens / rate if rate else 0))
    wall = time.perf_counter() - t0
    after = {name: cpu_s(proc) for name, proc in p.items()}
    deltas = lost = 0
    async with r.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.xlen(events_key(job_id))
            pipe.hget(job_key(job_id), "error")
        replies = await pipe.execute()
    for n, error in zip(replies[::2], replies[1::2], strict=True):
        deltas += max(0, n - 3)  # start, usage, end
        lost += bool(error and b"worker_lost" in error)
    raw = await raw_xadd_cpu_us(r, deltas, jobs)
    await r.aclose()
    used = {name: (after[name] - before[name]) / max(deltas, 1) * 1e6 for name in after}
    figure = f"worker CPU per published delta, {jobs} jobs x {tokens} deltas (µs)"
    if rate:
        figure = f"  the same at a human pace, {jobs} jobs x {tokens} deltas at {rate:g}/s (µs)"
    return [
        Row(
            figure,
            f"{used['worker']:.1f} µs ({deltas / wall:,.0f} deltas/s, {lost} lost; {load()})",
            f"raw XADD {raw:.1f}; upstream {used['upstream']:.1f}; valkey {used['valkey']:.1f}",
            "<= 20 µs, 0 lost" if not rate else "-",
            (used["worker"] <= 20 and lost == 0) if not rate else None,
        )
    ]


async def api_cpu(s: Stack, listeners: int, deltas: int, rate: float) -> list[Row]:
    p = procs(s)
    wait = 2.0 + listeners / 300  # every listener connects before the first token
    conn = await Conn.open(s.api_port)
    _, created = await conn.post_json("/v1/jobs", job_body(deltas, rate, wait=wait))
    conn.close()
    path = f"/v1/jobs/{created['id']}/events"
    connected = 0
    ready = asyncio.Event()
    got = 0

    async def listen() -> None:
        nonlocal connected, got
        c = await Conn.open(s.api_port)
        c._send_get(path, None)
        await c._head()
        connected += 1
        if connected == listeners:
            ready.set()
        async for part in c._chunks():
            got += part.count(b"event: delta")
            if b"event: end" in part:
                break
        c.close()

    tasks = [asyncio.create_task(listen()) for _ in range(listeners)]
    await asyncio.wait_for(ready.wait(), wait + 30)
    before = {name: cpu_s(proc) for name, proc in p.items()}
    mine = time.process_time()
    await asyncio.wait_for(asyncio.gather(*tasks), deltas / rate * 5 + 60)
    mine = time.process_time() - mine
    after = {name: cpu_s(proc) for name, proc in p.items()}
    used = {name: (after[name] - before[name]) / max(got, 1) * 1e6 for name in after}
    expected = listeners * deltas
    return [
        Row(
            f"API CPU per delivered event, {listeners} listeners of one job (µs)",
            f"{used['api']:.2f} µs ({got / expected * 100:.1f} % delivered; {load()})",
            f"listeners' read {mine / max(got, 1) * 1e6:.2f}; valkey {used['valkey']:.3f}",
            "<= 2 µs",
            used["api"] <= 2,
        )
    ]


async def suite(s: Stack, quick: bool) -> list[Row]:
    if quick:
        rows = [*await worker_cpu(s, 50, 50), *await worker_cpu(s, 20, 20, rate=50)]
        return [*rows, *await api_cpu(s, 50, 200, 400)]
    rows = [*await worker_cpu(s, 500, 200), *await worker_cpu(s, 100, 300, rate=50)]
    return [*rows, *await api_cpu(s, 1000, 1000, 1000)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tokenrelay-bench-cpu"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    async def go() -> list[Row]:
        with stack(args.workdir) as s:
            return await suite(s, args.quick)

    print_table(asyncio.run(go()), 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
