"""tokenrelay beside the Python peers a user might pick instead, on one fan-out and resume workload.

The peers are resumable-stream 0.2.0 (a port of Vercel's resumable-stream, Redis pub/sub) and
resumable-sse 0.1.0 (Redis Streams), each served the way its README shows by
ops/bench/peers_server.py: one uvicorn process per peer, run from its own virtualenv
(.venv-peers, created here on first use: the peers need redis>=6.2, tokenrelay's arq redis<6).
One Valkey, one synthetic upstream (ops/bench/upstream.py) and tokenrelay's API and worker
(run.py's Stack) serve all three; every delta carries the upstream's send time, so every
delivery's latency is measured the same way. Details and the peers' behaviour: PEERS.md.

    .venv/bin/python ops/bench/peers.py            # full: 1000 listeners x 1000 deltas/s, ~3 min
    .venv/bin/python ops/bench/peers.py --quick    # 50 x 200/s, in about a minute: the test
    .venv/bin/python ops/bench/peers.py --setup    # only create .venv-peers
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import fcntl
import functools
import itertools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client import Conn  # noqa: E402
from run import ROOT, Stack, pct  # noqa: E402

from tokenrelay.processes import Child, free_port, http_ok, start  # noqa: E402

PEERS_VENV = ROOT / ".venv-peers"
# httptools and hiredis: the parsers tokenrelay's own venv has, so the figures compare designs.
PEER_PACKAGES = [
    "resumable-stream==0.2.0", "resumable-sse==0.1.0", "fastapi", "uvicorn", "httptools",
    "sse-starlette", "httpx", "orjson", "uvloop", "hiredis",
]  # fmt: skip
SYSTEMS = ["tokenrelay", "resumable-stream", "resumable-sse"]
STAMP = re.compile(rb"t=(\d+);")
LIVE_NS = 1_000_000_000  # a delivery within 1 s of the upstream's write counts as live
GAP_S = 0.05  # a dropped listener stays away this long, so there is something to replay
AFTER = 20  # deltas a resumed listener reads before it is checked
LADDER = [1000, 500, 200, 100, 50, 20, 10, 5, 2, 1]  # full mode: tried until one survives
ROWS = {
    "fan_n": "fan-out: listeners x deltas/s",
    "fan_rate": "fan-out: deliveries/s",
    "fan_live": "fan-out: % delivered live (<= 1 s)",
    "fan_lat": "fan-out: delivery latency p50 / p99 (ms)",
    "fan_exact": "fan-out: listeners with every delta once, in order",
    "res_took": "resume: reconnect -> first replayed event p50 / p99 (ms)",
    "res_exact": "resume: tries given exactly the missed deltas",
    "late": "late listener, after the end: deltas it gets",
}


def setup_peers_venv() -> Path:
    """Create .venv-peers with the peers' packages unless it is there (safe to race)."""
    python, stamp = PEERS_VENV / "bin" / "python", PEERS_VENV / ".installed"
    wanted = "\n".join(PEER_PACKAGES)
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    PEERS_VENV.mkdir(exist_ok=True)
    (PEERS_VENV / ".gitignore").write_text("*\n")  # as Python 3.13's venv writes
    with open(PEERS_VENV / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == wanted):
            print(f"creating {PEERS_VENV} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            done = subprocess.run([*pip, *PEER_PACKAGES], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"pip install failed:\n{done.stdout}{done.stderr}"[-3000:])
            stamp.write_text(wanted)
    return python


def spec(tokens: int, rate: float, wait: float = 0) -> str:
    return f"tokens={tokens},rate={rate:g},wait={wait:g}"


class System:
    """How the workload reaches tokenrelay: a job is submitted, then listened to."""

    name = "tokenrelay"

    def __init__(self, port: int, logs: list[Path]) -> None:
        self.port = port
        self.logs = {log: log.stat().st_size if log.exists() else 0 for log in logs}

    def fresh(self) -> None:
        """Start from a clean server process (the peers' leftover producers die with it)."""

    async def new_path(self, model: str) -> str:
        conn = await Conn.open(self.port)
        body = {"upstream": "bench", "model": model, "messages": [{"role": "user", "content": "b"}]}
        status, created = await conn.post_json("/v1/jobs", body)
        conn.close()
        assert status == 202, created
        return f"/v1/jobs/{created['id']}/events"

    def resume(self, path: str, token: str) -> tuple[str, dict[str, str]]:
        return path, {"Last-Event-ID": token}

    def log_errors(self) -> str:
        """The errors its processes logged since the last call, counted, most frequent first."""
        lines = []
        for log, offset in self.logs.items():
            with open(log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
                self.logs[log] = f.tell()
            for line in text.splitlines():
                if line.startswith("{"):  # tokenrelay's JSON logs
                    with contextlib.suppress(ValueError):
                        entry = json.loads(line)
                        if entry.get("level") in ("error", "critical"):
                            lines.append(f"{entry.get('event')} {entry.get('error', '')}")
                elif (
                    line[:1].strip()
                    and re.search(r"Error|Exception", line)
                    and not line.startswith(("Traceback", "ERROR:    Exception in ASGI"))
                ):
                    lines.append(re.sub(r"[0-9a-f]{32}|[0-9a-f-]{36}", "<id>", line.strip()))
        counted = sorted(Counter(lines).items(), key=lambda item: -item[1])
        return "; ".join(f"{n} x {line[:150]}" for line, n in counted[:3])


class Peer(System):
    """A peers_server.py process; the first listener of an id starts its generation."""

    def __init__(self, name: str, python: Path, workdir: Path, redis_url: str, upstream: int):
        self.log = workdir / f"{name}.log"
        super().__init__(0, [self.log])
        self.name, self.python, self.workdir = name, python, workdir
        self.redis_url, self.upstream_port = redis_url, upstream
        self.child: Child | None = None

    def start(self) -> None:
        self.port = free_port()
        args = [str(self.python), str(HERE / "peers_server.py"), self.name, "--port"]
        args += [str(self.port), "--redis-url", self.redis_url]
        args += ["--upstream", f"http://127.0.0.1:{self.upstream_port}"]
        # Not what an earlier one logged, shutting down.
        self.logs[self.log] = self.log.stat().st_size if self.log.exists() else 0
        self.child = start(self.name, args, log=self.log, cwd=ROOT)
        healthz = f"http://127.0.0.1:{self.port}/healthz"
        self.child.wait_ready(lambda: http_ok(healthz), timeout_s=30)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace_s=10)

    def fresh(self) -> None:
        self.stop()
        self.start()

    async def new_path(self, model: str) -> str:
        return f"/stream/{uuid.uuid4().hex}?model={quote(model)}"

    def resume(self, path: str, token: str) -> tuple[str, dict[str, str]]:
        if self.name == "resumable-stream":  # characters already read, as ?resume_at=
            return f"{path}&resume_at={token}", {}
        return super().resume(path, token)


class HTTPStatusError(Exception):
    pass


READ_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, ValueError, HTTPStatusError)


async def blocks(
    conn: Conn, path: str, headers: dict[str, str] | None, opened: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    """The SSE events of ``GET path`` as they arrive (CRLF or LF), comments left out."""
    conn._send_get(path, headers)
    status, _ = await conn._head()
    if opened is not None:
        opened.set()
    if status != 200:
        raise HTTPStatusError(f"HTTP {status}")
    buffer = b""
    async for part in conn._chunks():
        buffer += part.replace(b"\r\n", b"\n")
        while (cut := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:cut], buffer[cut + 2 :]
            if block and not block.startswith(b":"):
                yield block


def stamp_of(block: bytes) -> int | None:
    found = STAMP.search(block)
    return int(found[1]) if found else None


def id_of(block: bytes) -> str:
    return next(line[3:].strip().decode() for line in block.split(b"\n") if line[:3] == b"id:")


# --- fan-out -----------------------------------------------------------------------------------


@dataclass
class FanOut:
    listeners: int
    rate: float
    tokens: int
    latencies: array[int] = field(default_factory=lambda: array("q"))
    delivered: int = 0
    exact: int = 0
    errors: int = 0
    first_ns: int = 0
    last_ns: int = 0

    @functools.cached_property
    def figures(self) -> tuple[float, float, float, float]:
        """Deliveries/s, % live, p50 and p99 latency (ms) over what was delivered."""
        lat = sorted(self.latencies)
        if not lat:
            return 0.0, 0.0, float("nan"), float("nan")
        per_s = self.delivered / max((self.last_ns - self.first_ns) / 1e9, 1e-3)
        live = bisect.bisect_right(lat, LIVE_NS) / (self.listeners * self.tokens) * 100
        p50, p99 = (lat[min(len(lat) - 1, round(p * (len(lat) - 1)))] / 1e6 for p in (0.5, 0.99))
        return per_s, live, p50, p99

    def survived(self) -> bool:
        return self.exact == self.listeners and self.figures[1] >= 95

    def cells(self) -> dict[str, str]:
        per_s, live, p50, p99 = self.figures
        return {
            "fan_n": f"{self.listeners} x {self.rate:g}/s"
            + ("" if self.survived() else " (did not keep up)"),
            "fan_rate": f"{per_s:,.0f}/s (of {self.listeners * self.rate:,.0f}/s)",
            "fan_live": f"{live:.1f} %",
            "fan_lat": f"{p50:,.1f} / {p99:,.1f}" if self.latencies else "none delivered",
            "fan_exact": f"{self.exact}/{self.listeners}"
            + (f" ({self.errors} errors)" if self.errors else ""),
        }

    def summary(self) -> str:
        per_s, live, _, p99 = self.figures
        return (
            f"at {self.listeners} x {self.rate:g}/s: {per_s:,.0f} deliveries/s, {live:.1f} % live, "
            f"p99 {p99:,.0f} ms, {self.exact}/{self.listeners} listeners complete and exact"
        )


async def fan_listener(port: int, path: str, out: FanOut, opened: asyncio.Event) -> None:
    """Follow one generation to its end: count, order-check and time every delta."""
    count, last, ordered = 0, 0, True
    conn: Conn | None = None
    try:
        conn = await Conn.open(port)
        conn._send_get(path, None)
        status, _ = await conn._head()
        opened.set()
        if status != 200:
            raise HTTPStatusError(f"HTTP {status}")
        async for part in conn._chunks():
            now = time.time_ns()
            stamps = [int(x) for x in STAMP.findall(part)]
            if stamps:
                if stamps[0] <= last or any(b <= a for a, b in itertools.pairwise(stamps)):
                    ordered = False
                last, count = stamps[-1], count + len(stamps)
                out.latencies.extend([now - s for s in stamps])
                out.first_ns = min(out.first_ns or stamps[0], stamps[0])
                out.last_ns = max(out.last_ns, now)
            if b"event: end" in part:
                break
    except READ_ERRORS:
        out.errors += 1
    finally:
        opened.set()
        if conn is not None:
            conn.close()
        out.delivered += count
        out.exact += count == out.tokens and ordered


async def fanout(system: System, listeners: int, rate: float, seconds: float) -> FanOut:
    """One generation, ``listeners`` SSE listeners on one server process, all connected before
    the first token (the upstream holds it back); bounded by the generation's time + 10 s."""
    system.fresh()
    tokens = int(rate * seconds)
    out = FanOut(listeners, rate, tokens)
    wait = 2.0 + listeners / 250
    path = await system.new_path(spec(tokens, rate, wait))
    opened = asyncio.Event()
    tasks = [asyncio.create_task(fan_listener(system.port, path, out, opened))]
    with contextlib.suppress(TimeoutError):  # a peer's first request starts its generation
        await asyncio.wait_for(opened.wait(), 10)
    await asyncio.sleep(0.3)
    ignored = asyncio.Event()
    tasks += [
        asyncio.create_task(fan_listener(system.port, path, out, ignored))
        for _ in range(listeners - 1)
    ]
    _, pending = await asyncio.wait(tasks, timeout=wait + seconds + 10)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return out


async def fanout_figures(system: System, quick: bool, notes: list[str]) -> dict[str, str]:
    """Quick: 50 listeners x 200/s. Full: 1000 x 1000/s, or else the largest N on the ladder
    that gets every delta to every listener, once, in order, >= 95 % of them live. A step that
    fell short while delivering over half the rate gets a second try (the machine is shared)."""
    ladder = [50] if quick else list(LADDER)
    rate = 200.0 if quick else 1000.0
    retried = False
    while True:
        result = await fanout(system, ladder[0], rate, 1.0 if quick else 3.0)
        if errors := system.log_errors():
            notes.append(f"fan-out {result.listeners} x {rate:g}/s, server log: {errors}")
        if result.survived() or len(ladder) == 1:
            return result.cells()
        notes.append("fan-out " + result.summary())
        feeds = result.figures[0] / rate  # listeners it fed at the full rate
        if not retried and feeds >= ladder[0] / 2:
            retried = True
            continue
        # Skip the steps its throughput rules out.
        ladder = [n for n in ladder[1:] if n <= 3 * feeds] or ladder[-1:]
        retried = False


# --- resume ------------------------------------------------------------------------------------


async def collect(
    port: int, path: str, within: float, opened: asyncio.Event | None = None
) -> tuple[list[int], str]:
    """Every delta stamp of ``GET path`` up to its end (or ``within`` s), and what went wrong."""
    stamps: list[int] = []
    problem = ""
    conn: Conn | None = None
    try:
        async with asyncio.timeout(within):
            conn = await Conn.open(port)
            async for block in blocks(conn, path, None, opened):
                if (stamp := stamp_of(block)) is not None:
                    stamps.append(stamp)
                if b"event: end" in block:
                    break
            else:
                problem = "closed without an end event"
    except TimeoutError:
        problem = f"no end within {within:g} s"
    except READ_ERRORS as exc:
        problem = str(exc) or type(exc).__name__
    finally:
        if conn is not None:
            conn.close()
        if opened is not None:
            opened.set()
    return stamps, problem


async def resume_try(
    system: System, path: str, before_n: int
) -> tuple[list[int], list[int], float]:
    """Read ``before_n`` deltas, drop, reconnect the peer's way: (before, after, ms to first)."""
    before: list[int] = []
    token, chars = "", 0
    conn = await Conn.open(system.port)
    try:
        async for block in blocks(conn, path, None):
            chars += len(block) + 2  # resumable-stream counts characters; its text is LF-only
            if (stamp := stamp_of(block)) is not None:
                before.append(stamp)
                if len(before) == before_n:
                    token = str(chars) if system.name == "resumable-stream" else id_of(block)
                    break
    finally:
        conn.close()
    await asyncio.sleep(GAP_S)
    resume_path, headers = system.resume(path, token)
    after: list[int] = []
    took = float("nan")
    t0 = time.perf_counter()
    conn = await Conn.open(system.port)
    try:
        async for block in blocks(conn, resume_path, headers):
            if took != took:
                took = (time.perf_counter() - t0) * 1000
            if (stamp := stamp_of(block)) is not None:
                after.append(stamp)
            if len(after) == AFTER or b"event: end" in block:
                break
    finally:
        conn.close()
    return before, after, took


@dataclass
class Resume:
    took: list[float] = field(default_factory=list)
    tries: int = 0
    exact: int = 0
    generations: int = 0
    wrong: Counter[str] = field(default_factory=Counter)  # inexact tries, by what went wrong
    late: str = ""

    def check(self, expected: list[int], before: list[int], after: list[int]) -> None:
        """Exact: what the listener got is what the never-dropped one got, up to its last."""
        got = before + after
        want = expected[: bisect.bisect_right(expected, got[-1] if got else 0)]
        if got == want:
            self.exact += 1
            return
        self.wrong["lost"] += bool(set(want) - set(got))
        self.wrong["repeated"] += len(got) > len(set(got))
        self.wrong["out of order"] += any(b < a for a, b in itertools.pairwise(got))

    def cells(self) -> dict[str, str]:
        took = f"{pct(self.took, 50):.2f} / {pct(self.took, 99):.2f}" if self.took else "none"
        exact = f"{self.exact}/{self.tries}"
        if self.wrong:
            exact += " (" + ", ".join(f"{n} {why}" for why, n in self.wrong.items() if n) + ")"
        return {"res_took": took, "res_exact": exact, "late": self.late}


async def resume(
    system: System, tries: int, rate: float, seconds: float, notes: list[str]
) -> Resume:
    """``tries`` drops and reconnects on running generations of ``seconds`` at ``rate``, the
    last one 1 s before its generation ends; each checked against a listener that never
    dropped. A drop reads 5..60 deltas, stays away 50 ms, then reads 20 more after resuming."""
    system.fresh()
    result = Resume()
    tokens = int(rate * seconds)
    while result.tries < tries and result.generations < tries:
        result.generations += 1
        path = await system.new_path(spec(tokens, rate))
        opened = asyncio.Event()
        control = asyncio.create_task(collect(system.port, path, seconds + 15, opened))
        await opened.wait()  # collect sets it whatever happens
        await asyncio.sleep(0.1)  # the control's request starts a peer's generation
        ends = time.monotonic() + seconds - 1.0
        outcomes = []
        while result.tries < tries and time.monotonic() < ends:
            before_n = 5 + (result.tries * 17) % 56
            result.tries += 1
            try:
                outcomes.append(await asyncio.wait_for(resume_try(system, path, before_n), 10))
            except (TimeoutError, *READ_ERRORS) as exc:
                result.wrong[str(exc) or type(exc).__name__] += 1
        expected, problem = await control
        if problem or len(expected) != tokens:
            notes.append(
                f"resume: the listener that never dropped got {len(expected)}/{tokens} deltas"
                + (f" ({problem})" if problem else "")
            )
        for before, after, took in outcomes:
            result.check(expected, before, after)
            if took == took:  # not NaN
                result.took.append(took)
        if not result.late:
            await asyncio.sleep(0.5)
            result.late = await late_listener(system, path, expected, tokens, seconds)
    return result


async def late_listener(
    system: System, path: str, expected: list[int], tokens: int, seconds: float
) -> str:
    """What a listener joining after the end gets (tokenrelay keeps a finished job a day)."""
    stamps, problem = await collect(system.port, path, seconds + 5)
    original = len(set(stamps) & set(expected))
    text = f"{original}/{tokens}"
    if len(stamps) > original:
        text += f" (+{len(stamps) - original} of a NEW generation it started)"
    return text + (f" ({problem})" if problem and problem != "closed without an end event" else "")


async def simultaneous_first(system: System, listeners: int = 10, tokens: int = 20) -> str:
    """Several first requests for one new id at once: how many generations start, and does
    every listener get each delta once?"""
    path = await system.new_path(spec(tokens, 200))
    results = await asyncio.gather(*(collect(system.port, path, 10) for _ in range(listeners)))
    distinct = {stamp for stamps, _ in results for stamp in stamps}
    exact = sum(len(stamps) == tokens == len(set(stamps)) for stamps, _ in results)
    twice = sum(len(stamps) > len(set(stamps)) for stamps, _ in results)
    short = sum(len(set(stamps)) < tokens for stamps, _ in results)
    return (
        f"{listeners} simultaneous first requests for one new id started "
        f"{len(distinct) / tokens:.0f} generation(s) of {tokens} deltas; {exact} listeners got "
        f"each delta once, {twice} got some twice, {short} got fewer than {tokens}"
    )


async def publish_calls(redis_url: str) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    stats = await r.info("commandstats")
    await r.aclose()
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


# --- the run -----------------------------------------------------------------------------------

Table = dict[str, dict[str, str]]
Notes = dict[str, list[str]]


async def measure(systems: list[System], redis_url: str, quick: bool) -> tuple[Table, Notes]:
    table: Table = {}
    notes: Notes = {system.name: [] for system in systems}
    tries, rate, seconds = (20, 200.0, 3.0) if quick else (100, 200.0, 4.0)
    for system in systems:
        mine = notes[system.name]
        table[system.name] = await fanout_figures(system, quick, mine)
        published = await publish_calls(redis_url)
        result = await resume(system, tries, rate, seconds, mine)
        table[system.name] |= result.cells()
        if system.name == "resumable-stream":
            per_delta = (await publish_calls(redis_url) - published) / (
                result.generations * rate * seconds
            )
            joins = 1 + 2 * result.tries / result.generations
            mine.append(
                f"resume: the producer PUBLISHes each delta to every listener that ever joined: "
                f"{per_delta:.1f} PUBLISH per delta with at most 2 connected ({joins:.0f} joins "
                f"per generation)"
            )
        if errors := system.log_errors():
            mine.append(f"resume, server log: {errors}")
        if isinstance(system, Peer):
            mine.append(await simultaneous_first(system))
            if errors := system.log_errors():
                mine.append(f"simultaneous first requests, server log: {errors}")
    return table, notes


def print_table(
    table: Table, notes: Notes, versions: dict[str, str], quick: bool, load: tuple[float, ...]
) -> None:
    print(
        f"\ntokenrelay vs Python peers ({'quick' if quick else 'full'}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n"
    )
    widths = [max(map(len, ROWS.values()))]
    widths += [max(len(name), *(len(table[name][key]) for key in ROWS)) for name in SYSTEMS]
    line = " | ".join(
        f"{text:<{width}}" for text, width in zip(["figure", *SYSTEMS], widths, strict=True)
    )
    print(line)
    print("-" * len(line))
    for key, figure in ROWS.items():
        cells = [figure, *(table[name][key] for name in SYSTEMS)]
        print(" | ".join(f"{text:<{width}}" for text, width in zip(cells, widths, strict=True)))
    print()
    for name in SYSTEMS:
        for note in notes[name] or ["nothing unexpected"]:
            print(f"{name}: {note}")
    print("peers' venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()))


def stray_processes() -> list[str]:
    """Any process this run started that is still alive."""
    import psutil

    return [" ".join(p.cmdline()[:3]) for p in psutil.Process().children(recursive=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="scaled down: what the test runs")
    parser.add_argument("--setup", action="store_true", help="only create .venv-peers")
    parser.add_argument("--timeout", type=float, default=1200.0, help="whole run, seconds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tokenrelay-bench-peers"))
    args = parser.parse_args(argv)
    python = setup_peers_venv()
    if args.setup:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    versions = json.loads(
        subprocess.run(
            [str(python), str(HERE / "peers_server.py"), "versions"],
            check=True,
            capture_output=True,
        ).stdout
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()  # other work on the machine moves the figures: say how much
    stack = Stack(args.workdir)
    peers: list[Peer] = []
    try:
        stack.start()
        peers = [
            Peer(name, python, args.workdir, stack.redis_url, stack.upstream_port)
            for name in SYSTEMS[1:]
        ]
        logs = [args.workdir / "api0.log", args.workdir / "worker0.log"]
        systems = [System(stack.api_port, logs), *peers]
        run = measure(systems, stack.redis_url, args.quick)
        table, notes = asyncio.run(asyncio.wait_for(run, args.timeout))
    finally:
        for peer in peers:
            peer.stop()
        stack.stop()
    print_table(table, notes, versions, args.quick, load)
    left = stray_processes()
    print(f"processes left running: {', '.join(left) if left else 'none'}")
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
