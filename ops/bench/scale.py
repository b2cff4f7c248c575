"""How tokenrelay scales out on one machine: jobs/s and deliveries/s with 1 and 2 API
processes and 1 and 2 workers, measured side by side in one run.

    .venv/bin/python ops/bench/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client import Conn, event_type  # noqa: E402
from run import STAMP, job_body, stack  # noqa: E402


async def jobs_per_second(ports: list[int], jobs: int, tokens: int) -> float:
    """Submit ``jobs`` short jobs round-robin over the API processes and follow each to its
    end; jobs finished per second, from the first submit to the last end."""

    async def one(i: int) -> None:
        port = ports[i % len(ports)]
        submit, listen = await Conn.open(port), await Conn.open(port)
        _, created = await submit.post_json("/v1/jobs", job_body(tokens, 0))
        async for _, block in listen.sse(f"/v1/jobs/{created['id']}/events"):
            if event_type(block) == b"end":
                break
        submit.close()
        listen.close()

    t0 = time.perf_counter()
    sem = asyncio.Semaphore(100)

    async def bounded(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(bounded(i) for i in range(jobs)))
    return jobs / (time.perf_counter() - t0)


async def deliveries_per_second(
    ports: list[int], listeners: int, rate: float, tokens: int
) -> float:
    """One job at ``rate`` deltas/s, ``listeners`` SSE listeners spread over the API
    processes; deliveries per second over the job's run."""
    conn = await Conn.open(ports[0])
    wait = 2.0 + listeners / 500
    _, created = await conn.post_json("/v1/jobs", job_body(tokens, rate, wait=wait))
    conn.close()
    path = f"/v1/jobs/{created['id']}/events"

    async def listen(i: int) -> int:
        c = await Conn.open(ports[i % len(ports)])
        c._send_get(path, None)
        await c._head()
        got = 0
        async for part in c._chunks():
            got += len(STAMP.findall(part))
            if b"event: end" in part:
                break
        c.close()
        return got

    t0 = time.perf_counter()
    total = sum(await asyncio.gather(*(listen(i) for i in range(listeners))))
    return total / (time.perf_counter() - t0 - wait)


async def main(quick: bool, workdir: Path) -> None:
    jobs, listeners = (100, 100) if quick else (600, 600)
    rows = []
    for apis, workers in ((1, 1), (2, 1), (1, 2), (2, 2)):
        run_dir = workdir / f"a{apis}w{workers}"
        run_dir.mkdir(parents=True, exist_ok=True)
        with stack(run_dir, workers=workers, apis=apis) as s:
            jps = await jobs_per_second(s.api_ports, jobs, tokens=20)
            dps = await deliveries_per_second(s.api_ports, listeners, rate=500, tokens=1000)
        rows.append((apis, workers, jps, dps))
    print(f"\ntokenrelay scale-out, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    head = f"{'APIs':>4} {'workers':>7} | {'jobs/s (20 tokens each)':>24} | deliveries/s"
    print(f"{head} ({listeners} listeners of one job at 500 deltas/s)")
    for apis, workers, jps, dps in rows:
        print(f"{apis:>4} {workers:>7} | {jps:>24,.0f} | {dps:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tokenrelay-scale"))
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.workdir))
