"""The wire contract's invariants, end to end over real processes, for every upstream kind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.integration.helpers import (
    Ev,
    assert_well_formed,
    collect,
    parse_sse,
    submit,
    texts,
)
from tests.support.system import RelaySystem
from tests.upstream_server import SCENARIOS, Scenario, UpstreamServer
from tokenrelay.keys import events_key


@dataclass(frozen=True)
class Variant:
    upstream: str
    chat: bool  # messages (chat) or prompt (generate / completions)

    def body(self, scenario: str, **extra: object) -> dict[str, object]:
        body: dict[str, object] = {"upstream": self.upstream, "model": scenario, **extra}
        if self.chat:
            body["messages"] = [{"role": "user", "content": scenario}]
        else:
            body["prompt"] = scenario
        return body


VARIANTS = [
    Variant("openai", chat=True),
    Variant("openai", chat=False),
    Variant("ollama", chat=True),
    Variant("ollama", chat=False),
    Variant("sse", chat=False),
]


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v.upstream}-{'chat' if v.chat else 'prompt'}")
def variant(request: pytest.FixtureRequest) -> Variant:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
        yield c


def eid(raw: str) -> tuple[int, int]:
    ms, seq = raw.split("-")
    return int(ms), int(seq)


def expected_text(name: str) -> str:
    sc = SCENARIOS[name]
    pieces = sc.pieces
    for cut in (sc.error_after, sc.drop_after):
        if cut is not None:
            pieces = pieces[:cut]
    return "".join(pieces)


# --- invariant 1: the deltas joined are the job's text and what the model produced ----------


@pytest.mark.parametrize("scenario", ["hello", "long", "weird", "length"])
async def test_deltas_join_to_job_text_and_upstream_text(
    client: httpx.AsyncClient, variant: Variant, scenario: str
) -> None:
    job_id = await submit(client, **variant.body(scenario))
    events = await collect(client, job_id)
    assert_well_formed(events)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert texts(events) == job["text"] == expected_text(scenario)
    assert job["status"] == "succeeded"
    assert job["finish_reason"] == events[-1].data["finish_reason"]
    assert events[-1].data["finish_reason"] == SCENARIOS[scenario].finish_reason
    assert job["last_event_id"] == events[-1].id
    start = events[0].data
    assert start == {
        "job_id": job_id,
        "upstream": variant.upstream,
        "model": scenario,
        "attempt": 1,
    }
    usage = [e for e in events if e.type == "usage"]
    assert len(usage) == 1
    assert usage[0].data["source"] == ("estimated" if variant.upstream == "sse" else "upstream")
    assert usage[0].data["completion_tokens"] > 0
    assert job["usage"]["total_tokens"] == usage[0].data["total_tokens"]


async def test_usage_is_estimated_when_the_upstream_sends_none(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, upstream="openai", model="no_usage")
    events = await collect(client, job_id)
    (usage,) = [e.data for e in events if e.type == "usage"]
    assert usage["source"] == "estimated"
    assert usage["completion_tokens"] == len(SCENARIOS["no_usage"].pieces)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["ttft_ms"] is not None and usage["duration_ms"] >= usage["ttft_ms"]


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_tool_calls_stream_as_fragments_and_merge_in_status(
    client: httpx.AsyncClient, upstream: UpstreamServer, kind: str
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    job_id = await submit(client, upstream=kind, model="tools", tools=tools)
    events = await collect(client, job_id)
    assert_well_formed(events)
    assert events[-1].data == {"finish_reason": "tool_calls"}
    calls: dict[int, dict[str, str]] = {}
    for e in (e for e in events if e.type == "tool_call"):
        call = calls.setdefault(e.data["index"], {"id": "", "name": "", "arguments": ""})
        call["id"] += e.data.get("id", "")
        call["name"] += e.data.get("name", "")
        call["arguments"] += e.data["arguments"]
    expected = SCENARIOS["tools"].tool_calls
    assert [c["name"] for c in calls.values()] == [t.name for t in expected]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [
        json.loads(t.arguments) for t in expected
    ]
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded" and job["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in job["tool_calls"]] == [t.name for t in expected]
    assert [c["function"]["arguments"] for c in job["tool_calls"]] == [
        c["arguments"] for c in calls.values()
    ]
    assert job["text"] == texts(events) == "Let me check the weather."
    # The request the upstream saw carried the tools.
    path = "/api/chat" if kind == "ollama" else "/v1/chat/completions"
    recorded = [r for r in upstream.requests if r.path == path and r.scenario == "tools"]
    assert any(r.body.get("tools") == tools for r in recorded)


# --- invariant 2: resuming after any event id gives exactly the events after it -------------


async def test_resume_after_every_event_id(client: httpx.AsyncClient, variant: Variant) -> None:
    job_id = await submit(client, **variant.body("hello"))
    full = await collect(client, job_id)
    assert_well_formed(full)
    for i, event in enumerate(full):
        by_query, by_header = await asyncio.gather(
            collect(client, job_id, after=event.id),
            collect(client, job_id, last_event_id=event.id),
        )
        assert by_query == full[i + 1 :]
        assert by_header == full[i + 1 :]


async def test_query_wins_over_last_event_id(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, model="hello")
    full = await collect(client, job_id)
    got = await collect(client, job_id, after=full[2].id, last_event_id=full[0].id)
    assert got == full[3:]


async def test_resume_mid_stream_while_the_job_runs(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("resume_live", Scenario(pieces=[f"r{i} " for i in range(30)], delay_s=0.03))
    job_id = await submit(client, model="resume_live")
    seen: list[Ev] = []
    # Read a few events, drop the connection, resume from the last id seen: three times.
    for _ in range(3):
        headers = {"Last-Event-ID": seen[-1].id} if seen else {}
        async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as resp:
            buf = b""
            async for part in resp.aiter_bytes():
                buf += part
                if buf.count(b"\n\n") >= 4 and buf.endswith(b"\n\n"):
                    break
        seen += parse_sse(buf)[0]
    seen += await collect(client, job_id, last_event_id=seen[-1].id)
    full = await collect(client, job_id)
    assert seen == full
    assert texts(seen) == "".join(f"r{i} " for i in range(30))


async def test_after_now_gets_only_new_events(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("now_slow", Scenario(pieces=[f"n{i} " for i in range(20)], delay_s=0.03))
    job_id = await submit(client, model="now_slow")
    await asyncio.sleep(0.25)
    before = (await client.get(f"/v1/jobs/{job_id}")).json()["last_event_id"]
    tail = await collect(client, job_id, after="now")
    full = await collect(client, job_id)
    assert tail, "a running job still has events to come"
    assert tail == full[len(full) - len(tail) :]
    assert before is not None
    assert eid(tail[0].id) > eid(before)


async def test_after_the_end_closes_at_once(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, model="hello")
    full = await collect(client, job_id)
    assert await collect(client, job_id, after=full[-1].id, within=3) == []
    assert await collect(client, job_id, after="now", within=3) == []


# --- invariant 4: stop sequences, across delta boundaries ------------------------------------


@pytest.mark.parametrize("stops", [["END"], ["zzz", "END"], ["re END"]])
async def test_stop_sequence_split_across_deltas_is_never_published(
    client: httpx.AsyncClient, upstream: UpstreamServer, variant: Variant, stops: list[str]
) -> None:
    name = f"stop-{variant.upstream}-{variant.chat}-{len(stops[0])}-{len(stops)}"
    upstream.add(name, Scenario(pieces=SCENARIOS["stopword"].pieces, delay_s=0.05))
    job_id = await submit(client, **variant.body(name, options={"stop": stops}))
    events = await collect(client, job_id)
    assert_well_formed(events)
    full = "".join(SCENARIOS["stopword"].pieces)
    cut = min(full.find(s) for s in stops if s in full)
    assert texts(events) == full[:cut]
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["text"] == full[:cut]
    assert job["finish_reason"] == "stop" and events[-1].data["finish_reason"] == "stop"
    # The worker closed the upstream request instead of reading the rest.
    assert upstream.wait_for_disconnect(name, timeout=5)


# --- invariant 5: every listener sees the same events -----------------------------------------


async def test_twenty_listeners_joining_at_different_times_see_the_same_events(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("fanout", Scenario(pieces=[f"f{i} " for i in range(40)], delay_s=0.02))
    job_id = await submit(client, model="fanout")

    async def listener(delay: float) -> list[Ev]:
        await asyncio.sleep(delay)
        return await collect(client, job_id)

    results = await asyncio.gather(*(listener(i * 0.05) for i in range(20)))
    late = await collect(client, job_id)  # one more after the end
    for events in [*results, late]:
        assert events == results[0]
    assert_well_formed(results[0])
    assert texts(results[0]) == "".join(f"f{i} " for i in range(40))


# --- the rest of the consumer contract -------------------------------------------------------


async def test_ndjson_by_accept(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, model="hello")
    sse = await collect(client, job_id)
    response = await client.get(
        f"/v1/jobs/{job_id}/events", headers={"Accept": "application/x-ndjson"}
    )
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in response.content.splitlines() if line]
    assert [Ev(o["id"], o["type"], o["data"]) for o in lines] == sse


async def test_headers_keepalive_and_events_of_a_job_not_started(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("late_start", Scenario(pieces=HELLO_PIECES, first_delay_s=1.5))
    job_id = await submit(client, model="late_start")
    async with asyncio.timeout(10):
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            body = await response.aread()
    events, comments = parse_sse(body)
    assert comments >= 1, "a keep-alive comment while the upstream is silent"
    assert_well_formed(events)


HELLO_PIECES = SCENARIOS["hello"].pieces


async def test_unknown_job_is_404_and_bad_ids_are_400(client: httpx.AsyncClient) -> None:
    for path in ["/v1/jobs/job_AAAAAAAAAAAAAAAAAAAAAA", "/v1/jobs/nope", "/v1/jobs/nope/events"]:
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
    job_id = await submit(client, model="hello")
    full = await collect(client, job_id)
    for bad in ["abc", "1-2-3", "-1-0", "1.5-0", "99999999999999999999-0"]:
        response = await client.get(f"/v1/jobs/{job_id}/events", params={"after": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == "after"
    response = await client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Last-Event-ID"
    future = f"{eid(full[-1].id)[0] + 1}-0"
    response = await client.get(f"/v1/jobs/{job_id}/events", params={"after": future})
    assert response.status_code == 400
    assert "never issued" in response.json()["error"]["message"]


async def test_resume_point_older_than_what_is_kept_is_410(
    client: httpx.AsyncClient, system: RelaySystem
) -> None:
    job_id = await submit(client, model="long")
    full = await collect(client, job_id)
    r = aioredis.Redis.from_url(system.redis_url)
    try:
        await r.xtrim(events_key(job_id), maxlen=10, approximate=False)
    finally:
        await r.aclose()
    response = await client.get(f"/v1/jobs/{job_id}/events", params={"after": full[5].id})
    assert response.status_code == 410
    assert response.json()["error"]["type"] == "gone_error"
    # What is still kept can still be resumed from, exactly.
    assert await collect(client, job_id, after=full[-5].id) == full[-4:]
