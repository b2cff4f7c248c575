"""The OpenAI-compatible endpoints, through the official ``openai`` client, over real processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import HELLO, SCENARIOS, Scenario, UpstreamServer

TEXT = "".join(HELLO)
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} of a place",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
    for name in ("get_weather", "get_time")
]
EXPECTED_CALLS = [(c.name, json.loads(c.arguments)) for c in SCENARIOS["tools"].tool_calls]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(system: RelaySystem) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{system.base_url}/v1", api_key="unused", max_retries=0, timeout=15
    ) as c:
        yield c


@pytest.fixture
async def aclient(system: RelaySystem) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{system.base_url}/v1", api_key="unused", max_retries=0, timeout=15
    ) as c:
        yield c


@pytest.fixture
async def http(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=15) as c:
        yield c


def frames(body: bytes) -> list[tuple[str | None, str]]:
    """``(id, data)`` of each SSE frame of a complete body; comments skipped."""
    out = []
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        out.append((fields.get("id"), fields["data"]))
    return out


def chunk_text(data: list[tuple[str | None, str]]) -> str:
    text = ""
    for _, raw in data:
        if raw != "[DONE]":
            for choice in orjson.loads(raw).get("choices", []):
                text += choice.get("delta", {}).get("content") or choice.get("text") or ""
    return text


# --- chat, streaming ------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("upstream_name", ["openai", "ollama"])
def test_chat_stream_sync(client: openai.OpenAI, upstream_name: str) -> None:
    model = f"{upstream_name}/hello"
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=USER,
        stream=True,
    )
    job_id = raw.headers["x-tokenrelay-job"]
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert {c.id for c in chunks} == {f"chatcmpl-{job_id}"}
    assert {c.model for c in chunks} == {model}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.created for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)  # no include_usage, no usage chunk
    job = httpx.get(f"{client.base_url}jobs/{job_id}").json()
    assert job["text"] == TEXT and job["upstream"] == upstream_name and job["model"] == "hello"


async def test_chat_stream_async_with_usage_and_keepalives(
    aclient: openai.AsyncOpenAI, upstream: UpstreamServer
) -> None:
    # Silent for longer than the keep-alive interval first: comments must not upset the client.
    upstream.add("oa_pause", Scenario(pieces=["a", "b", "c"], first_delay_s=1.2))
    async with asyncio.timeout(20):
        stream = await aclient.chat.completions.create(
            model="openai/oa_pause",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    *body, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in body if c.choices) == "abc"
    assert body[-1].choices[0].finish_reason == "stop"
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == 7 and last.usage.completion_tokens == 3
    assert last.usage.total_tokens == 10
    assert all(c.usage is None for c in body)


async def test_completions_stream_and_not(aclient: openai.AsyncOpenAI) -> None:
    async with asyncio.timeout(30):
        for upstream_name in ("openai", "ollama", "sse"):
            model = f"{upstream_name}/hello"
            stream = await aclient.completions.create(model=model, prompt="hello", stream=True)
            chunks = [chunk async for chunk in stream]
            assert "".join(c.choices[0].text for c in chunks) == TEXT, upstream_name
            assert chunks[-1].choices[0].finish_reason == "stop"
            assert {c.object for c in chunks} == {"text_completion"}
            assert chunks[0].id.startswith("cmpl-job_")
            done = await aclient.completions.create(model=model, prompt=["hello"])
            assert done.object == "text_completion" and done.model == model
            assert done.choices[0].text == TEXT and done.choices[0].finish_reason == "stop"
            assert done.usage is not None and done.usage.completion_tokens > 0


# --- chat, not streaming ----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scenario", ["hello", "length"])
def test_chat_not_streaming(client: openai.OpenAI, scenario: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=f"openai/{scenario}",
        messages=USER,
    )
    done = raw.parse()
    assert done.id == f"chatcmpl-{raw.headers['x-tokenrelay-job']}"
    assert done.object == "chat.completion" and done.model == f"openai/{scenario}"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == TEXT
    assert done.choices[0].message.tool_calls is None
    assert done.choices[0].finish_reason == SCENARIOS[scenario].finish_reason
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, len(HELLO))
    assert done.model_extra is not None and done.model_extra["status"] == "succeeded"


async def test_options_reach_the_upstream(
    aclient: openai.AsyncOpenAI, upstream: UpstreamServer
) -> None:
    upstream.add("oa_options", Scenario())
    async with asyncio.timeout(15):
        done = await aclient.chat.completions.create(
            model="openai/oa_options",
            messages=USER,
            temperature=0.3,
            top_p=0.9,
            max_completion_tokens=50,
            stop="\n\n",
            seed=7,
            user="ignored",
            metadata={"ticket": "42"},
        )
    (seen,) = [r.body for r in upstream.requests if r.scenario == "oa_options"]
    assert seen["model"] == "oa_options" and seen["messages"] == USER
    assert (seen["temperature"], seen["top_p"], seen["max_tokens"]) == (0.3, 0.9, 50)
    assert (seen["stop"], seen["seed"]) == (["\n\n"], 7)
    async with httpx.AsyncClient() as http:
        job = (await http.get(f"{aclient.base_url}jobs/{done.model_extra['job_id']}")).json()  # type: ignore[index]
    assert job["metadata"] == {"ticket": "42"}


# --- tool calls -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("upstream_name", ["openai", "ollama"])
def test_tool_calls_through_the_stream_helper(client: openai.OpenAI, upstream_name: str) -> None:
    with client.chat.completions.stream(
        model=f"{upstream_name}/tools",
        messages=USER,
        tools=TOOLS,
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert {"content.delta", "tool_calls.function.arguments.done"} <= kinds
    message = final.choices[0].message
    assert message.content == "Let me check the weather."
    assert final.choices[0].finish_reason == "tool_calls"
    calls = message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == EXPECTED_CALLS
    assert all(c.id and c.type == "function" for c in calls)


async def test_tool_calls_by_the_documented_fragment_loop(aclient: openai.AsyncOpenAI) -> None:
    async with asyncio.timeout(15):
        stream = await aclient.chat.completions.create(
            model="openai/tools",
            messages=USER,
            tools=TOOLS,
            stream=True,
        )
        tool_calls: dict[int, dict[str, Any]] = {}
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            for tc in delta.tool_calls or []:
                if tc.id:
                    assert tc.function is not None
                    tool_calls[tc.index] = {
                        "id": tc.id,
                        "function": {"name": tc.function.name, "arguments": ""},
                    }
                if tc.function and tc.function.arguments:
                    tool_calls[tc.index]["function"]["arguments"] += tc.function.arguments
    got = [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tool_calls.values()
    ]
    assert got == EXPECTED_CALLS
    assert [c["id"] for c in tool_calls.values()] == ["call_1", "call_2"]


@pytest.mark.timeout(30)
def test_tool_calls_not_streaming(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="openai/tools",
        messages=USER,
        tools=TOOLS,
    )
    calls = done.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == EXPECTED_CALLS  # type: ignore[union-attr]
    assert done.choices[0].finish_reason == "tool_calls"


# --- resume, background, cancel ---------------------------------------------------------------


async def test_resume_the_openai_stream_with_last_event_id(
    http: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("oa_resume", Scenario(pieces=[f"r{i} " for i in range(30)], delay_s=0.03))
    body = {"model": "openai/oa_resume", "messages": USER, "stream": True}
    body["stream_options"] = {"include_usage": True}
    async with asyncio.timeout(20):
        seen: list[tuple[str | None, str]] = []
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            job_id = response.headers["x-tokenrelay-job"]
            assert response.headers["cache-control"] == "no-cache"
            buf = b""
            async for part in response.aiter_bytes():
                buf += part
                if buf.count(b"\n\ndata:") + buf.count(b"\n\nid:") >= 5 and buf.endswith(b"\n\n"):
                    break
        seen += frames(buf)
        # Resume twice more: by header with the chatcmpl id in the path, then by query.
        for path_id in (f"chatcmpl-{job_id}", job_id):
            last = [i for i, _ in seen if i][-1]
            async with http.stream(
                "GET",
                f"/v1/chat/completions/{path_id}/events",
                headers={"Last-Event-ID": last} if path_id != job_id else {},
                params={"after": last} if path_id == job_id else {},
            ) as response:
                assert response.headers["x-tokenrelay-job"] == job_id
                buf = b""
                async for part in response.aiter_bytes():
                    buf += part
                    if path_id != job_id and buf.count(b"\n\n") >= 3 and buf.endswith(b"\n\n"):
                        break
            seen += frames(buf)
        full = frames((await http.get(f"/v1/chat/completions/{job_id}/events")).content)
    assert seen == full
    assert chunk_text(seen) == "".join(f"r{i} " for i in range(30))
    assert seen[-1] == (None, "[DONE]")
    usage = orjson.loads(seen[-2][1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 30
    ids = [tuple(map(int, i.split("-"))) for i, _ in seen if i]
    assert ids == sorted(ids)
    # After the last id there is only the terminator; a bad id is the contract's 400.
    end_id = [i for i, _ in seen if i][-1]
    after_end = await http.get(
        f"/v1/chat/completions/{job_id}/events", headers={"Last-Event-ID": end_id}
    )
    assert after_end.content == b"data: [DONE]\n\n"
    bad = await http.get(f"/v1/chat/completions/{job_id}/events", params={"after": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    missing = await http.get("/v1/chat/completions/job_missing/events")
    assert missing.status_code == 404


async def test_any_job_can_be_followed_in_openai_format(http: httpx.AsyncClient) -> None:
    async with asyncio.timeout(15):
        created = await http.post("/v1/jobs", json={"model": "hello", "messages": USER})
        job_id = created.json()["id"]
        chat = frames((await http.get(f"/v1/chat/completions/{job_id}/events")).content)
        text = frames(
            (
                await http.get(f"/v1/completions/{job_id}/events", params={"include_usage": "1"})
            ).content
        )
    assert chunk_text(chat) == chunk_text(text) == TEXT
    first, usage = orjson.loads(chat[0][1]), orjson.loads(text[-2][1])
    assert first["model"] == "openai/hello" and first["object"] == "chat.completion.chunk"
    assert "usage" not in first and usage["usage"]["completion_tokens"] == len(HELLO)
    assert {orjson.loads(raw)["object"] for _, raw in text[:-1]} == {"text_completion"}
    # The same events, the same ids: chat adds the role chunk, the other a usage chunk at the end.
    assert [i for i, _ in chat if i][1:] == [i for i, _ in text if i][:-1]


async def test_background_returns_at_once_and_is_followed(
    aclient: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("oa_background", Scenario(pieces=HELLO, first_delay_s=0.5))
    async with asyncio.timeout(20):
        raw = await aclient.chat.completions.with_raw_response.create(
            model="openai/oa_background",
            messages=USER,
            extra_body={"background": True},
        )
        queued = raw.parse()
        extra = queued.model_extra or {}
        job_id = raw.headers["x-tokenrelay-job"]
        assert extra["status"] == "queued" and extra["job_id"] == job_id
        assert queued.id == f"chatcmpl-{job_id}" and queued.choices[0].finish_reason is None
        assert extra["events_url"] == f"/v1/chat/completions/{job_id}/events"
        body = (await http.get(extra["events_url"])).content
        data = frames(body)
        assert chunk_text(data) == TEXT and data[-1] == (None, "[DONE]")
        assert orjson.loads(data[-2][1])["status"] == "succeeded"
        done = await aclient.chat.completions.retrieve(queued.id)
        assert done.choices[0].message.content == TEXT
        assert done.choices[0].finish_reason == "stop"
        assert (done.model_extra or {})["status"] == "succeeded"
        assert done.model == "openai/oa_background" and done.created == queued.created


async def test_a_cancelled_stream_finishes_stop_with_status_cancelled(
    http: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("oa_cancel", Scenario(pieces=[f"c{i} " for i in range(200)], delay_s=0.02))
    body = {"model": "openai/oa_cancel", "messages": USER, "stream": True}
    async with asyncio.timeout(20), http.stream("POST", "/v1/chat/completions", json=body) as resp:
        buf = b""
        cancelled = False
        async for part in resp.aiter_bytes():
            buf += part
            if not cancelled and buf.count(b'"content":"c') >= 3:
                job_id = resp.headers["x-tokenrelay-job"]
                assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code in (200, 202)
                cancelled = True
    data = frames(buf)
    assert data[-1] == (None, "[DONE]")
    finish = orjson.loads(data[-2][1])
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["status"] == "cancelled"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_request_errors_are_the_contract_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as unknown:
        client.chat.completions.create(model="nowhere/gpt", messages=USER)
    assert unknown.value.status_code == 422
    assert unknown.value.body == {
        "type": "invalid_request_error",
        "message": unknown.value.body["message"],  # type: ignore[index]
        "param": "model",
    }
    assert "'nowhere'" in unknown.value.message
    with pytest.raises(openai.UnprocessableEntityError) as two:
        client.chat.completions.create(model="openai/hello", messages=USER, n=2)
    assert two.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as schema:
        client.chat.completions.create(
            model="openai/hello",
            messages=USER,
            response_format={"type": "json_object"},
        )
    assert schema.value.body["param"] == "response_format"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as chat_on_sse:
        client.chat.completions.create(model="sse/hello", messages=USER)
    assert chat_on_sse.value.body["param"] == "messages"  # type: ignore[index]
    # A value JSON cannot carry onward (an integer beyond 64 bits) is refused, not a 500.
    huge = b'{"model": "openai/hello", "messages": [{"role": "user", "content": "x", "n": 1%s}]}'
    refused = httpx.post(
        f"{client.base_url}chat/completions",
        content=huge % (b"0" * 30),
        headers={"content-type": "application/json"},
    )
    assert refused.status_code == 422, refused.text
    with pytest.raises(openai.UnprocessableEntityError) as bad_temperature:
        client.completions.create(model="openai/hello", prompt="hello", temperature=5)
    assert bad_temperature.value.body["param"] == "temperature"  # type: ignore[index]


@pytest.mark.timeout(30)
def test_an_error_mid_stream_is_an_error_chunk(client: openai.OpenAI, system: RelaySystem) -> None:
    stream = client.chat.completions.create(
        model="openai/error_mid",
        messages=USER,
        stream=True,
    )
    text = ""
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == "".join(HELLO[:3])
    assert failed.value.body["type"] == "upstream_error"  # type: ignore[index]
    assert "error_mid" in failed.value.message
    # On the wire: the error chunk, then [DONE]; no finish chunk.
    body = httpx.post(
        f"{system.base_url}/v1/chat/completions",
        json={"model": "openai/error_mid", "messages": USER, "stream": True},
        timeout=15,
    ).content
    data = frames(body)
    assert data[-1] == (None, "[DONE]")
    assert set(orjson.loads(data[-2][1])) == {"error"}
    assert all('"finish_reason":"' not in raw for _, raw in data)


@pytest.mark.timeout(30)
def test_a_failed_job_not_streaming_is_an_http_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="openai/http500", messages=USER)
    assert unavailable.value.status_code == 503
    assert unavailable.value.response.headers["x-tokenrelay-job"].startswith("job_")
    assert "upstream_error" in unavailable.value.message
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="openai/http429", messages=USER)
    assert limited.value.status_code == 429


# --- models and keys --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_system(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API (no worker) with default models, API keys and a prompt size limit."""
    upstreams = json.loads(system_env(upstream)["TOKENRELAY_UPSTREAMS"])
    upstreams["openai"]["default_model"] = "gpt-test"
    upstreams["ollama"]["default_model"] = "llama-test"
    env = system_env(upstream, TOKENRELAY_API_KEYS="key-1,key-2", TOKENRELAY_MAX_PROMPT_CHARS="100")
    env["TOKENRELAY_UPSTREAMS"] = json.dumps(upstreams)
    workdir: Path = tmp_path_factory.mktemp("oa-keyed")
    with redis_dbs.database() as url, relay_system(workdir, url, env, workers=0) as sys_:
        yield sys_


@pytest.mark.timeout(30)
def test_models_list_and_api_keys(keyed_system: RelaySystem) -> None:
    base = f"{keyed_system.base_url}/v1"
    with openai.OpenAI(base_url=base, api_key="key-2", max_retries=0) as keyed:
        models = keyed.models.list()
        assert [m.id for m in models] == ["ollama/llama-test", "openai/gpt-test"]
        assert [m.owned_by for m in models] == ["ollama", "openai"]
        # "upstream/" asks for its default model: accepted (queued; no worker runs here).
        queued = keyed.chat.completions.create(
            model="openai/",
            messages=USER,
            extra_body={"background": True},
        )
        assert (queued.model_extra or {})["status"] == "queued"
    with openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as unkeyed:
        with pytest.raises(openai.AuthenticationError):
            unkeyed.models.list()
        with pytest.raises(openai.AuthenticationError):
            unkeyed.chat.completions.create(model="openai/hello", messages=USER)


@pytest.mark.timeout(30)
def test_admission_control_applies(keyed_system: RelaySystem) -> None:
    base = f"{keyed_system.base_url}/v1"
    with openai.OpenAI(base_url=base, api_key="key-1", max_retries=0) as keyed:
        with pytest.raises(openai.APIStatusError) as too_long:
            keyed.completions.create(model="openai/hello", prompt="x" * 101)
    assert too_long.value.status_code == 413
