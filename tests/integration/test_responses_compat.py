"""OpenAI's Responses API with background mode, through the official ``openai`` client (strict
response validation on), over real API and worker processes, Redis and upstreams of every kind."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseStreamEvent

from tests.integration.helpers import collect, wait_status
from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import HELLO, SCENARIOS, Scenario, UpstreamServer

TEXT = "".join(HELLO)
KINDS = ["openai", "ollama", "sse"]
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": name,
        "description": f"{name} of a place",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        "strict": False,
    }
    for name in ("get_weather", "get_time")
]
EXPECTED_CALLS = [(c.name, json.loads(c.arguments)) for c in SCENARIOS["tools"].tool_calls]
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * len(HELLO),
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def _client(base_url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=20,
        _strict_response_validation=True,
    )


@pytest.fixture
def client(system: RelaySystem) -> Iterator[openai.OpenAI]:
    with _client(system.base_url) as c:
        yield c


@pytest.fixture
async def aclient(system: RelaySystem) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{system.base_url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=20,
        _strict_response_validation=True,
    ) as c:
        yield c


@pytest.fixture
async def http(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=20) as c:
        yield c


def numbered(events: list[ResponseStreamEvent]) -> list[int]:
    return [event.sequence_number for event in events]


def deltas(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def slow(upstream: UpstreamServer, name: str, n: int = 40, delay_s: float = 0.05) -> str:
    upstream.add(name, Scenario(pieces=[f"{name}{i} " for i in range(n)], delay_s=delay_s))
    return "".join(f"{name}{i} " for i in range(n))


# --- background: drop, retrieve, resume by sequence number -----------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_background_stream_dropped_then_resumed_by_sequence_number(
    client: openai.OpenAI, system: RelaySystem, upstream: UpstreamServer, kind: str
) -> None:
    expected = slow(upstream, f"bg_{kind}", n=60)
    stream = client.responses.create(
        model=f"{kind}/bg_{kind}", input=f"bg_{kind}", background=True, stream=True
    )
    seen: list[ResponseStreamEvent] = []
    for event in stream:
        seen.append(event)
        if sum(e.type == "response.output_text.delta" for e in seen) == 3:
            break
    stream.close()  # the client drops; the job runs on
    assert [e.type for e in seen[:2]] == ["response.created", "response.in_progress"]
    assert seen[0].response.status == "queued" and seen[0].response.background is True
    rid = seen[0].response.id
    assert rid.startswith("resp_")

    now = client.responses.retrieve(rid)
    assert now.status == "in_progress" and now.id == rid and now.model == f"{kind}/bg_{kind}"
    assert now.output_text.startswith(deltas(seen))

    n = seen[-1].sequence_number
    rest = list(client.responses.retrieve(rid, stream=True, starting_after=n))
    assert rest[0].sequence_number == n + 1
    assert numbered(seen + rest) == list(range(len(seen) + len(rest)))
    final = rest[-1]
    assert final.type == "response.completed"
    assert deltas(seen + rest) == final.response.output_text == expected
    assert final.response.usage is not None and final.response.usage.output_tokens == 60

    # The helper asks for the whole stream and accumulates it.
    with client.responses.stream(response_id=rid) as helper:
        replayed = list(helper)
        assert helper.get_final_response().output_text == expected
    assert numbered(replayed) == list(range(len(seen) + len(rest)))
    with client.responses.stream(response_id=rid, starting_after=n) as helper:
        assert [e.sequence_number for e in helper] == numbered(rest)
    assert client.responses.retrieve(rid).output_text == expected

    # The same response is a job: named in the header, followable as one.
    raw = client.responses.with_raw_response.retrieve(rid)
    job_id = raw.headers["x-tokenrelay-job"]
    assert rid == "resp_" + job_id.removeprefix("job_")
    job = httpx.get(f"{system.base_url}/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "succeeded" and job["text"] == expected


# --- plain creates ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_plain_stream_and_plain_create(client: openai.OpenAI, kind: str) -> None:
    with client.responses.with_streaming_response.create(
        model=f"{kind}/hello", input="hello", stream=True
    ) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["x-tokenrelay-job"].startswith("job_")
        events = list(raw.parse())
    assert [e.type for e in events] == [*TEXT_EVENTS, "response.completed"]
    assert numbered(events) == list(range(len(events)))
    assert deltas(events) == TEXT
    assert events[0].response.status == "in_progress"
    done = events[-1].response
    assert done.status == "completed" and done.output_text == TEXT
    assert done.usage is not None
    assert done.usage.output_tokens == len(HELLO) and done.usage.input_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + len(HELLO)

    created = client.responses.create(model=f"{kind}/hello", input="hi")
    assert created.status == "completed" and created.output_text == TEXT
    assert created.object == "response" and created.model == f"{kind}/hello"
    assert created.usage is not None and created.usage.output_tokens == len(HELLO)
    assert created.output[0].type == "message" and created.output[0].status == "completed"
    assert client.responses.retrieve(created.id).output_text == TEXT


@pytest.mark.timeout(60)
def test_instructions_options_and_input_items(
    client: openai.OpenAI, upstream: UpstreamServer
) -> None:
    upstream.add("rs_options", Scenario(pieces=HELLO))
    created = client.responses.create(
        model="openai/rs_options",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        ],
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=50,
        metadata={"ticket": "42"},
        text={"format": {"type": "text"}},  # accepted: what every response is
        truncation="disabled",
        user="u-1",
    )
    (seen,) = [r.body for r in upstream.requests if r.scenario == "rs_options"]
    assert seen["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "q"},
    ]
    assert (seen["temperature"], seen["top_p"], seen["max_tokens"]) == (0.3, 0.9, 50)
    assert created.instructions == "Be brief." and created.metadata == {"ticket": "42"}
    assert (created.temperature, created.top_p, created.max_output_tokens) == (0.3, 0.9, 50)
    items = client.responses.input_items.list(created.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    newest = client.responses.input_items.list(created.id, limit=1)
    assert newest.data[0].id == items.data[-1].id and newest.has_more is True


# --- cancel, delete -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cancel_twice(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    slow(upstream, "rs_cancel", n=400, delay_s=0.05)
    queued = client.responses.create(model="openai/rs_cancel", input="hi", background=True)
    assert queued.status == "queued" and queued.output == []
    deadline = time.monotonic() + 15
    while client.responses.retrieve(queued.id).output_text.count(" ") < 3:
        assert time.monotonic() < deadline, "the response never got going"
        time.sleep(0.05)
    with pytest.raises(openai.BadRequestError):
        client.responses.delete(queued.id)  # not while it runs
    t0 = time.monotonic()
    cancelled = client.responses.cancel(queued.id)
    assert time.monotonic() - t0 < 3.0
    assert cancelled.status == "cancelled" and cancelled.output_text.startswith("rs_cancel0 ")
    assert upstream.wait_for_disconnect("rs_cancel", timeout=1.0)
    again = client.responses.cancel(queued.id)
    assert again.model_dump() == cancelled.model_dump()
    events = list(client.responses.retrieve(queued.id, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"
    assert deltas(events) == cancelled.output_text

    client.responses.delete(queued.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(queued.id)


# --- tools and conversations -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_tool_call_round_trip(client: openai.OpenAI, upstream: UpstreamServer, kind: str) -> None:
    with client.responses.stream(model=f"{kind}/tools", input="weather?", tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    if kind == "openai":  # Ollama sends each call whole: one delta each
        assert kinds.count("response.function_call_arguments.delta") > 2
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == EXPECTED_CALLS
    assert all(c.call_id and c.status == "completed" for c in calls)
    assert first.output_text == "Let me check the weather."
    assert [item.type for item in first.output] == ["message", "function_call", "function_call"]
    retrieved = client.responses.retrieve(first.id)
    assert retrieved.output_text == first.output_text and retrieved.usage == first.usage
    fields = ("id", "type", "status", "call_id", "name", "arguments")
    assert [[getattr(i, f, None) for f in fields] for i in retrieved.output] == [
        [getattr(i, f, None) for f in fields] for i in first.output
    ]

    upstream.add(f"rs_after_tools_{kind}", Scenario(pieces=["It is sunny."]))
    second = client.responses.create(
        model=f"{kind}/rs_after_tools_{kind}",
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name}: ok"}
            for c in calls
        ],
        tools=TOOLS,
    )
    assert second.output_text == "It is sunny." and second.previous_response_id == first.id
    (sent,) = [r.body for r in upstream.requests if r.scenario == f"rs_after_tools_{kind}"]
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", "tool", "tool"]
    assert sent["messages"][0]["content"] == "weather?"
    assert sent["messages"][1]["content"] == "Let me check the weather."
    assert len(sent["messages"][1]["tool_calls"]) == 2
    assert [m["content"] for m in sent["messages"][2:]] == ["get_weather: ok", "get_time: ok"]
    if kind == "openai":
        assert [m["tool_call_id"] for m in sent["messages"][2:]] == [c.call_id for c in calls]
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["function_call_output"] * 2

    # A third turn continues the second, the whole conversation first.
    upstream.add(f"rs_third_{kind}", Scenario(pieces=["Bye."]))
    third = client.responses.create(
        model=f"{kind}/rs_third_{kind}", previous_response_id=second.id, input="thanks"
    )
    assert third.output_text == "Bye."
    (sent,) = [r.body for r in upstream.requests if r.scenario == f"rs_third_{kind}"]
    assert [m["role"] for m in sent["messages"]] == [*roles, "assistant", "user"]


# --- how responses end --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_an_upstream_error_ends_failed(client: openai.OpenAI, kind: str) -> None:
    events = list(
        client.responses.create(model=f"{kind}/error_mid", input="error_mid", stream=True)
    )
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed" and last.response.error is not None
    assert last.response.error.code == "server_error"
    assert last.response.error.message.startswith("upstream_error: ")
    assert deltas(events) == "".join(HELLO[:3])
    assert numbered(events) == list(range(len(events)))
    assert client.responses.retrieve(last.response.id).status == "failed"
    # Not streaming, a failed response is an HTTP error, as OpenAI's own.
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=f"{kind}/http429", input="http429")
    queued = client.responses.create(model=f"{kind}/http429", input="http429", background=True)
    with client.responses.stream(response_id=queued.id) as stream:
        *_, ended = list(stream)
    assert ended.type == "response.failed"
    assert ended.response.error is not None
    assert ended.response.error.code == "rate_limit_exceeded"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_max_output_tokens_ends_incomplete(
    client: openai.OpenAI, upstream: UpstreamServer, kind: str
) -> None:
    events = list(
        client.responses.create(
            model=f"{kind}/length", input="length", max_output_tokens=5, stream=True
        )
    )
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == TEXT
    assert client.responses.retrieve(last.response.id).status == "incomplete"


@pytest.fixture
def second_api(system: RelaySystem, tmp_path: Path) -> Iterator[RelaySystem]:
    """Another API process on the session system's Redis (no worker of its own)."""
    other = RelaySystem(tmp_path, system.redis_url, system.env)
    try:
        other.start_api()
        yield other
    finally:
        other.stop()


@pytest.mark.timeout(60)
async def test_followers_on_two_api_processes_see_the_same_numbered_events(
    aclient: openai.AsyncOpenAI, second_api: RelaySystem, upstream: UpstreamServer
) -> None:
    expected = slow(upstream, "rs_two", n=40, delay_s=0.03)

    async def follow(client: openai.AsyncOpenAI, rid: str) -> list[tuple[int, str, str]]:
        stream = await client.responses.retrieve(rid, stream=True)
        return [(e.sequence_number, e.type, e.model_dump_json()) async for e in stream]

    async with (
        openai.AsyncOpenAI(
            base_url=f"{second_api.base_url}/v1",
            api_key="unused",
            max_retries=0,
            timeout=20,
            _strict_response_validation=True,
        ) as other,
        asyncio.timeout(30),
    ):
        queued = await aclient.responses.create(model="openai/rs_two", input="hi", background=True)
        one, two, three = await asyncio.gather(
            follow(aclient, queued.id), follow(aclient, queued.id), follow(other, queued.id)
        )
        late = await follow(other, queued.id)
    assert one == two == three == late
    assert [n for n, _, _ in one] == list(range(len(one)))
    assert one[-1][1] == "response.completed"
    assert (await aclient.responses.retrieve(queued.id)).output_text == expected


# --- errors in OpenAI's shape ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unknown_ids_and_unsupported_fields(client: openai.OpenAI, system: RelaySystem) -> None:
    for unknown in ("resp_" + "x" * 22, "resp_nope", "nothing"):
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(unknown)
        with pytest.raises(openai.NotFoundError):
            client.responses.cancel(unknown)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(unknown)
    with pytest.raises(openai.NotFoundError) as previous:
        client.responses.create(
            model="openai/hello", input="hi", previous_response_id="resp_" + "y" * 22
        )
    assert previous.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as unsupported:
        client.responses.create(model="openai/hello", input="hi", reasoning={"effort": "low"})
    assert "reasoning" in unsupported.value.message
    with pytest.raises(openai.UnprocessableEntityError) as json_format:
        client.responses.create(
            model="openai/hello", input="hi", text={"format": {"type": "json_object"}}
        )
    assert "text" in json_format.value.message
    with pytest.raises(openai.UnprocessableEntityError) as choice:
        client.responses.create(model="openai/hello", input="hi", tool_choice="required")
    assert choice.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as item:
        client.responses.create(
            model="openai/hello", input=[{"type": "reasoning", "id": "rs_1", "summary": []}]
        )
    assert "function_call_output" in item.value.message
    with pytest.raises(openai.UnprocessableEntityError) as tokens:
        client.responses.create(model="openai/hello", input="hi", max_output_tokens=0)
    assert tokens.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as unknown_upstream:
        client.responses.create(model="nowhere/gpt", input="hi")
    assert unknown_upstream.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):
        client.responses.create(model="openai/hello", input="hi", background=True, store=False)
    with pytest.raises(openai.UnprocessableEntityError) as prompt_only:
        client.responses.create(model="sse/hello", input="hi", instructions="Be brief.")
    assert prompt_only.value.body["param"] == "input"  # type: ignore[index]


# --- a worker killed mid-response -------------------------------------------------------------

LEASE_TTL_S = 2.0


@pytest.fixture
def crash_system(tmp_path: Path, redis_db: str, upstream: UpstreamServer) -> Iterator[RelaySystem]:
    env = system_env(upstream, TOKENRELAY_LEASE_TTL_S=str(LEASE_TTL_S))
    with relay_system(tmp_path, redis_db, env) as system:
        yield system


@pytest.mark.timeout(60)
async def test_a_killed_worker_ends_the_response_failed(
    crash_system: RelaySystem, upstream: UpstreamServer
) -> None:
    slow(upstream, "rs_kill", n=300, delay_s=0.03)
    async with (
        openai.AsyncOpenAI(
            base_url=f"{crash_system.base_url}/v1",
            api_key="unused",
            max_retries=0,
            timeout=20,
            _strict_response_validation=True,
        ) as aclient,
        httpx.AsyncClient(base_url=crash_system.base_url, timeout=10) as http,
        asyncio.timeout(40),
    ):
        stream = await aclient.responses.create(
            model="openai/rs_kill", input="hi", background=True, stream=True
        )
        events = []
        async for event in stream:
            events.append(event)
            if event.type == "response.output_text.delta":
                crash_system.workers[0].send_signal(signal.SIGKILL)
                break
        events += [event async for event in stream]
        job_id = "job_" + events[0].response.id.removeprefix("resp_")
        await wait_status(http, job_id, "failed", within=LEASE_TTL_S + 10)
        assert (await collect(http, job_id))[-1].data == {"finish_reason": "error"}
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.error is not None and last.response.error.code == "server_error"
    assert last.response.error.message.startswith("worker_lost: ")
    assert numbered(events) == list(range(len(events)))


# --- keys: auth and ownership -------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_system(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API (no worker: responses stay queued) with two API keys."""
    env = system_env(upstream, TOKENRELAY_API_KEYS="key-1,key-2")
    workdir: Path = tmp_path_factory.mktemp("responses-keyed")
    with redis_dbs.database() as url, relay_system(workdir, url, env, workers=0) as sys_:
        yield sys_


@pytest.mark.timeout(30)
def test_a_response_is_its_keys_alone(keyed_system: RelaySystem) -> None:
    with (
        _client(keyed_system.base_url, "key-1") as one,
        _client(keyed_system.base_url, "key-2") as two,
    ):
        queued = one.responses.create(model="openai/hello", input="hi", background=True)
        assert one.responses.retrieve(queued.id).status == "queued"
        for call in (two.responses.retrieve, two.responses.cancel, two.responses.delete):
            with pytest.raises(openai.NotFoundError):
                call(queued.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.create(model="openai/hello", input="hi", previous_response_id=queued.id)
        # Cancelled while queued: it ends at once, without a worker.
        cancelled = one.responses.cancel(queued.id)
        assert cancelled.status == "cancelled" and cancelled.output == []
        events = list(one.responses.retrieve(queued.id, stream=True))
        assert [e.type for e in events] == ["response.created", "response.incomplete"]
    with _client(keyed_system.base_url, "wrong") as unkeyed:
        with pytest.raises(openai.AuthenticationError):
            unkeyed.responses.retrieve(queued.id)
        with pytest.raises(openai.AuthenticationError):
            unkeyed.responses.create(model="openai/hello", input="hi")


# --- one renderer: the live stream, a replay and retrieve agree -------------------------------


def sse_frames(raw: bytes) -> list[tuple[int, dict[str, Any]]]:
    """``(id, data)`` of each SSE frame of a whole body."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((int(fields["id"]), json.loads(fields["data"])))
    return out


@pytest.mark.timeout(60)
async def test_live_stream_full_replay_and_retrieve_agree(
    http: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    """A response with text and tool calls: its live stream, a replay from the start and the
    retrieved Response's output are one rendering; the ``id:`` lines are the sequence numbers,
    and ``Last-Event-ID`` resumes after one."""
    created = {"model": "openai/tools", "input": "weather?", "tools": TOOLS, "stream": True}
    async with asyncio.timeout(30):
        live_raw = (await http.post("/v1/responses", json=created)).content
    live = sse_frames(live_raw)
    assert [n for n, _ in live] == [e["sequence_number"] for _, e in live] == list(range(len(live)))
    rid = live[0][1]["response"]["id"]
    completed = live[-1][1]
    assert completed["type"] == "response.completed"
    async with asyncio.timeout(30):
        replay = await http.get(f"/v1/responses/{rid}", params={"stream": "true"})
    assert replay.content == live_raw
    retrieved = (await http.get(f"/v1/responses/{rid}")).json()
    assert retrieved["output"] == completed["response"]["output"]
    assert [item["type"] for item in retrieved["output"]] == [
        "message",
        "function_call",
        "function_call",
    ]
    for after in (0, 4, len(live) - 2):
        async with asyncio.timeout(30):
            resumed = await http.get(
                f"/v1/responses/{rid}",
                params={"stream": "true"},
                headers={"Last-Event-ID": str(after)},
            )
        assert sse_frames(resumed.content) == live[after + 1 :]


@pytest.mark.timeout(60)
async def test_a_running_response_retrieved_has_its_output_so_far(
    http: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    expected = slow(upstream, "sofar", n=40)
    created = {"model": "openai/sofar", "input": "x", "background": True}
    rid = (await http.post("/v1/responses", json=created)).json()["id"]
    async with asyncio.timeout(20):
        while True:
            now = (await http.get(f"/v1/responses/{rid}")).json()
            if now["output"] and now["output"][0]["content"]:
                break
            await asyncio.sleep(0.05)
    assert now["status"] == "in_progress"
    (item,) = now["output"]
    assert item["status"] == "in_progress"
    assert expected.startswith(item["content"][0]["text"])
