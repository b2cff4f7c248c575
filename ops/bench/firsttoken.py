"""Time to first token as a new user meets it: a new connection per request.

Each run: POST ``/v1/jobs`` on a new connection, then GET its events on another new
connection, until the first ``delta``; against streaming the same upstream directly (POST
``/v1/chat/completions`` on a new connection until its first content delta). Direct and relay
runs are interleaved, so both see the same machine load. Also the POST's round trip beside a
GET that answers 404 (``/v1/jobs/<unknown>``) from the same client, and the relay's time split
into stages: the POST, POST answered -> ``start`` read, ``start`` -> first ``delta``.

Two clients: the lean asyncio one of the benchmarks (ops/bench/client.py) and httpx (what a
user would write); the difference between them is the client's own cost, not tokenrelay's.
A new ``httpx.AsyncClient`` per request costs ~20 ms more on its own (its SSL context loads
the CA bundle, even for http://): printed beside, not counted.

    .venv/bin/python ops/bench/firsttoken.py --runs 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client import Conn, event_type  # noqa: E402
from run import Row, Stack, job_body, pct, print_table, stack  # noqa: E402

DIRECT_BODY = {"model": "tokens=5,rate=0", "stream": True, "messages": []}


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


async def direct_lean(s: Stack) -> float:
    t0 = time.perf_counter()
    conn = await Conn.open(s.upstream_port)
    data = orjson.dumps(DIRECT_BODY)
    conn.writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(data), data)
    )
    await conn._head()
    async for part in conn._chunks():
        if b'"content"' in part:
            break
    conn.close()
    return ms(t0)


async def relay_lean(s: Stack) -> tuple[float, float, float, float]:
    """(first delta, POST, POST answered -> start, start -> first delta), ms from the start."""
    t0 = time.perf_counter()
    submit = await Conn.open(s.api_port)
    status, created = await submit.post_json("/v1/jobs", job_body(5, 0))
    assert status == 202, created
    posted = ms(t0)
    submit.close()
    listen = await Conn.open(s.api_port)
    started = first = float("nan")
    async for _, block in listen.sse(f"/v1/jobs/{created['id']}/events"):
        kind = event_type(block)
        if kind == b"start":
            started = ms(t0)
        elif kind == b"delta":
            first = ms(t0)
            break
    listen.close()
    return first, posted, started - posted, first - started


async def get_404_lean(s: Stack) -> float:
    t0 = time.perf_counter()
    conn = await Conn.open(s.api_port)
    status, _ = await conn.get("/v1/jobs/job_AAAAAAAAAAAAAAAAAAAAAA")
    assert status == 404
    conn.close()
    return ms(t0)


def new_connection_client(base_url: str = "") -> httpx.AsyncClient:
    """One httpx client that opens a new connection per request (no keep-alive). A new client
    per request would add its construction (~20 ms here: its SSL context loads the CA bundle,
    even for http://), which is the client's cost, not the server's."""
    return httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_keepalive_connections=0))


def client_construction_ms() -> float:
    t0 = time.perf_counter()
    for _ in range(5):
        httpx.AsyncClient()
    return ms(t0) / 5


async def direct_httpx(c: httpx.AsyncClient, s: Stack) -> float:
    t0 = time.perf_counter()
    url = f"http://127.0.0.1:{s.upstream_port}/v1/chat/completions"
    async with c.stream("POST", url, json=DIRECT_BODY) as response:
        async for line in response.aiter_lines():
            if '"content"' in line:
                break
    return ms(t0)


async def relay_httpx(c: httpx.AsyncClient) -> tuple[float, float]:
    """(first delta, POST), ms from the start; a new connection per request."""
    t0 = time.perf_counter()
    created = (await c.post("/v1/jobs", json=job_body(5, 0))).json()
    posted = ms(t0)
    first = float("nan")
    async with c.stream("GET", f"/v1/jobs/{created['id']}/events") as response:
        async for line in response.aiter_lines():
            if line == "event: delta":
                first = ms(t0)
                break
    return first, posted


async def get_404_httpx(c: httpx.AsyncClient) -> float:
    t0 = time.perf_counter()
    assert (await c.get("/v1/jobs/job_AAAAAAAAAAAAAAAAAAAAAA")).status_code == 404
    return ms(t0)


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def first_token(s: Stack, runs: int) -> list[Row]:
    for _ in range(3):  # warm up: imports, connection pools, the upstream's first answers
        await relay_lean(s)
        await direct_lean(s)
    direct, relay, posts, gets, to_start, to_delta = [], [], [], [], [], []
    hdirect, hrelay, hposts, hgets = [], [], [], []
    hc = new_connection_client(f"http://127.0.0.1:{s.api_port}")
    for _ in range(runs):
        direct.append(await direct_lean(s))
        first, posted, start, delta = await relay_lean(s)
        relay.append(first)
        posts.append(posted)
        to_start.append(start)
        to_delta.append(delta)
        gets.append(await get_404_lean(s))
        hdirect.append(await direct_httpx(hc, s))
        hfirst, hposted = await relay_httpx(hc)
        hrelay.append(hfirst)
        hposts.append(hposted)
        hgets.append(await get_404_httpx(hc))
    await hc.aclose()
    construction = client_construction_ms()
    over50 = pct(relay, 50) - pct(direct, 50)
    over99 = pct(relay, 99) - pct(direct, 99)
    hover50 = pct(hrelay, 50) - pct(hdirect, 50)
    hover99 = pct(hrelay, 99) - pct(hdirect, 99)
    ratio = pct(posts, 50) / pct(gets, 50)
    hratio = pct(hposts, 50) / pct(hgets, 50)
    return [
        Row(
            f"first delta, new connections, {runs} interleaved runs (ms)",
            f"p50 {pct(relay, 50):.2f} p99 {pct(relay, 99):.2f} (overhead {over50:.2f} / "
            f"{over99:.2f}; {load()})",
            f"direct p50 {pct(direct, 50):.2f} p99 {pct(direct, 99):.2f}",
            "overhead p50 <= 5, p99 <= 15",
            over50 <= 5 and over99 <= 15,
        ),
        Row(
            "  its stages, p50: POST | POST answered -> start | start -> delta (ms)",
            f"{pct(posts, 50):.2f} | {pct(to_start, 50):.2f} | {pct(to_delta, 50):.2f}",
            "-",
            "-",
        ),
        Row(
            "POST /v1/jobs round trip vs GET 404, new connection, p50 (ms)",
            f"{pct(posts, 50):.2f} ({ratio:.2f}x the GET)",
            f"GET 404 {pct(gets, 50):.2f}",
            "<= 1.5x the GET",
            ratio <= 1.5,
        ),
        Row(
            "  the same with httpx, a new connection per request (ms)",
            f"first delta overhead p50 {hover50:.2f} p99 {hover99:.2f}; "
            f"POST {pct(hposts, 50):.2f} ({hratio:.2f}x)",
            f"direct p50 {pct(hdirect, 50):.2f}; GET 404 {pct(hgets, 50):.2f}; "
            f"a new httpx client costs {construction:.1f} more",
            "-",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tokenrelay-bench-ttft"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    async def go() -> list[Row]:
        with stack(args.workdir) as s:
            return await first_token(s, args.runs)

    print_table(asyncio.run(go()), 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
