"""Client-side helpers for integration tests: submit jobs, read SSE/NDJSON event streams."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True)
class Ev:
    id: str
    type: str
    data: dict[str, Any]


def parse_sse(body: bytes) -> tuple[list[Ev], int]:
    """Events and keep-alive comments of a complete SSE body (independent of the app's code)."""
    events, comments = [], 0
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            comments += 1
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append(Ev(fields["id"], fields["event"], orjson.loads(fields["data"])))
    return events, comments


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    body.setdefault("messages", None if "prompt" in body else [{"role": "user", "content": "hi"}])
    body = {k: v for k, v in body.items() if v is not None}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def collect(
    client: httpx.AsyncClient,
    job_id: str,
    *,
    after: str | None = None,
    last_event_id: str | None = None,
    within: float = 15.0,
) -> list[Ev]:
    """Every event the API sends for the job until it closes the response (after ``end``)."""
    events, _ = await collect_raw(
        client, job_id, after=after, last_event_id=last_event_id, within=within
    )
    return events


async def collect_raw(
    client: httpx.AsyncClient,
    job_id: str,
    *,
    after: str | None = None,
    last_event_id: str | None = None,
    within: float = 15.0,
) -> tuple[list[Ev], int]:
    params = {"after": after} if after is not None else {}
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    async with asyncio.timeout(within):
        async with client.stream(
            "GET", f"/v1/jobs/{job_id}/events", params=params, headers=headers
        ) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            body = await response.aread()
    return parse_sse(body)


async def wait_status(
    client: httpx.AsyncClient, job_id: str, *statuses: str, within: float = 10.0
) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
            if job["status"] in statuses:
                return dict(job)
            await asyncio.sleep(0.02)


def texts(events: list[Ev]) -> str:
    return "".join(e.data["text"] for e in events if e.type == "delta")


def assert_well_formed(events: list[Ev]) -> None:
    """start first, one end and it is last, ids strictly increasing, delta indices 0..n-1."""
    assert events, "no events"
    assert events[0].type == "start"
    assert [e.type for e in events].count("end") == 1
    assert events[-1].type == "end"
    ids = [tuple(int(x) for x in e.id.split("-")) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    deltas = [e.data["index"] for e in events if e.type == "delta"]
    assert deltas == list(range(len(deltas)))


async def follow_resilient(
    client: httpx.AsyncClient, job_id: str, *, within: float = 60.0, max_reconnects: int = 50
) -> tuple[list[Ev], int]:
    """Follow a job to its ``end`` through dropped connections and restarts, resuming with
    ``Last-Event-ID`` each time, as a client on a flaky network does. Returns the events and
    how many times it reconnected."""
    events: list[Ev] = []
    reconnects = 0
    async with asyncio.timeout(within):
        while True:
            headers = {"Last-Event-ID": events[-1].id} if events else {}
            buf = b""
            try:
                async with client.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers
                ) as response:
                    if response.status_code == 200:
                        async for part in response.aiter_bytes():
                            buf += part
                            complete = buf[: buf.rfind(b"\n\n") + 2]
                            if complete:
                                events += parse_sse(complete)[0]
                                buf = buf[len(complete) :]
                            if events and events[-1].type == "end":
                                return events, reconnects
            except httpx.HTTPError:
                pass
            reconnects += 1
            assert reconnects <= max_reconnects, "too many reconnects"
            await asyncio.sleep(0.1)
