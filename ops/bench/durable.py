"""Durable Streams: tokenrelay's streams on Redis beside the protocol's reference server (the
in-memory Node one, ``@durable-streams/server``), the same workload in the same run.

    .venv/bin/python ops/bench/durable.py            # 5 s a figure
    .venv/bin/python ops/bench/durable.py --quick    # 1 s a figure (tests/test_bench.py)

- appends/s: 16 writers, each appending 100-byte messages to a stream of its own, one request
  at a time on a kept-alive connection;
- catch-up reads/s: 16 readers reading a 100-message stream from its start, over and over;
- deliveries/s to 100 SSE readers: 100 readers follow one stream live (``live=sse``) while one
  writer appends 200 messages as fast as it is answered; deliveries (messages times readers)
  over the time from the first append to the last reader having them all.

Needs the reference server's package: ``make js`` (tests/js/durable-streams).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from client import Conn  # noqa: E402
from run import stack  # noqa: E402

from tokenrelay.processes import Child, free_port, start  # noqa: E402

JS_DIR = ROOT / "tests" / "js" / "durable-streams"
WRITERS = 16
READERS = 16
SSE_READERS = 100
SSE_MESSAGES = 200
MESSAGE = b"x" * 96


async def request(
    conn: Conn, method: str, path: str, body: bytes = b"", ctype: str = "text/plain"
) -> tuple[int, dict[bytes, bytes], bytes]:
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {ctype}\r\n"
    conn.writer.write(head.encode() + b"content-length: %d\r\n\r\n%s" % (len(body), body))
    status, headers = await conn._head()
    data = b"" if status in (204, 304) else await conn._body(headers)
    return status, headers, data


async def appends(port: int, seconds: float) -> float:
    async def writer() -> int:
        conn = await Conn.open(port)
        path = f"/v1/stream/bench-w-{uuid.uuid4().hex}"
        assert (await request(conn, "PUT", path))[0] == 201
        done, ends = 0, time.perf_counter() + seconds
        while time.perf_counter() < ends:
            status, _, _ = await request(conn, "POST", path, b"%04d" % done + MESSAGE)
            assert status in (200, 204), status
            done += 1
        conn.close()
        return done

    counts = await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return sum(counts) / seconds


async def reads(port: int, seconds: float) -> float:
    conn = await Conn.open(port)
    path = f"/v1/stream/bench-r-{uuid.uuid4().hex}"
    assert (await request(conn, "PUT", path))[0] == 201
    for i in range(100):
        await request(conn, "POST", path, b"%04d" % i + MESSAGE)
    conn.close()

    async def reader() -> int:
        c = await Conn.open(port)
        done, ends = 0, time.perf_counter() + seconds
        while time.perf_counter() < ends:
            status, _, body = await request(c, "GET", f"{path}?offset=-1")
            assert status == 200 and len(body) == 100 * (4 + len(MESSAGE)), (status, len(body))
            done += 1
        c.close()
        return done

    counts = await asyncio.gather(*(reader() for _ in range(READERS)))
    return sum(counts) / seconds


async def deliveries(port: int) -> float:
    conn = await Conn.open(port)
    path = f"/v1/stream/bench-s-{uuid.uuid4().hex}"
    assert (await request(conn, "PUT", path))[0] == 201
    ready = [asyncio.Event() for _ in range(SSE_READERS)]
    finished: list[float] = []

    async def follower(i: int) -> None:
        c = await Conn.open(port)
        got = 0
        async for now, block in c.sse(f"{path}?offset=-1&live=sse"):
            if block.startswith(b"event: control"):
                ready[i].set()
            elif block.startswith(b"event: data"):
                got += block.count(b";")  # messages in the event: one or a batch
                if got >= SSE_MESSAGES:
                    finished.append(now)
                    break
        c.close()

    tasks = [asyncio.create_task(follower(i)) for i in range(SSE_READERS)]
    async with asyncio.timeout(30):
        await asyncio.gather(*(e.wait() for e in ready))
        began = time.perf_counter()
        for i in range(SSE_MESSAGES):
            status, _, _ = await request(conn, "POST", path, b"%04d;" % i + MESSAGE)
            assert status == 204, status
        await asyncio.gather(*tasks)
    conn.close()
    return SSE_READERS * SSE_MESSAGES / (max(finished) - began)


async def measure(port: int, seconds: float) -> list[float]:
    return [await appends(port, seconds), await reads(port, seconds), await deliveries(port)]


def reference(workdir: Path) -> tuple[Child, int]:
    assert (JS_DIR / "node_modules" / "@durable-streams" / "server").is_dir(), "run `make js`"
    port = free_port()
    child = start(
        "reference",
        ["node", "ref-server.mjs"],
        log=workdir / "reference.log",
        env={**os.environ, "PORT": str(port)},
        cwd=JS_DIR,
    )
    child.wait_for_log("ready ", timeout_s=20)
    return child, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s a figure")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else 5.0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-durable-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with stack(workdir, workers=0) as s:
        relay = asyncio.run(measure(s.api_port, seconds))
    child, port = reference(workdir)
    try:
        ref = asyncio.run(measure(port, seconds))
    finally:
        child.stop(grace_s=5)
    cores = os.cpu_count()
    print(f"Durable Streams, {cores} cores, Python {platform.python_version()}, same run")
    print(f"{'figure':<36} | {'tokenrelay (Redis)':>20} | {'reference (Node, memory)':>24}")
    names = (
        f"appends/s ({WRITERS} writers)",
        f"catch-up reads/s ({READERS} readers)",
        f"deliveries/s to {SSE_READERS} SSE readers",
    )
    for name, mine, theirs in zip(names, relay, ref, strict=True):
        print(f"{name:<36} | {mine:>20,.0f} | {theirs:>24,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
