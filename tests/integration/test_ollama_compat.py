"""The Ollama-compatible endpoints, through the official ``ollama`` client, over real processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import ollama
import orjson
import pytest

from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import HELLO, SCENARIOS, Scenario, UpstreamServer

TEXT = "".join(HELLO)
USER = [{"role": "user", "content": "hi"}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "the weather of a place",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
]
EXPECTED_CALLS = [(c.name, json.loads(c.arguments)) for c in SCENARIOS["tools"].tool_calls]
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
def client(system: RelaySystem) -> Iterator[ollama.Client]:
    with ollama.Client(host=system.base_url, timeout=15) as c:
        yield c


@pytest.fixture
async def aclient(system: RelaySystem) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=system.base_url, timeout=15) as c:
        yield c


@pytest.fixture
async def http(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=15) as c:
        yield c


def assert_final(part: ollama.ChatResponse | ollama.GenerateResponse, pieces: int) -> None:
    assert part.done is True
    assert part.prompt_eval_count == 7 and part.eval_count == pieces
    for name in DURATIONS:
        assert isinstance(getattr(part, name), int) and getattr(part, name) >= 0, name
    assert part.total_duration is not None and part.eval_duration is not None
    assert part.total_duration >= part.eval_duration > 0


# --- chat -------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("upstream_name", ["ollama", "openai"])
def test_chat_streams_ndjson(client: ollama.Client, upstream_name: str) -> None:
    model = f"{upstream_name}/hello"
    parts = list(client.chat(model=model, messages=USER, stream=True))
    *body, final = parts
    assert "".join(p.message.content or "" for p in body) == TEXT
    assert all(p.done is False and p.model == model for p in body)
    assert all(p.message.role == "assistant" for p in parts)
    assert final.message.content == "" and final.done_reason == "stop"
    assert_final(final, len(HELLO))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scenario", ["hello", "length"])
def test_chat_not_streaming(client: ollama.Client, scenario: str) -> None:
    done = client.chat(model=f"ollama/{scenario}", messages=USER)
    assert done.message.content == TEXT and done.message.role == "assistant"
    assert done.done_reason == SCENARIOS[scenario].finish_reason
    assert done.model == f"ollama/{scenario}"
    assert_final(done, len(HELLO))


async def test_async_client_chat_streams(aclient: ollama.AsyncClient) -> None:
    async with asyncio.timeout(15):
        parts = [
            p async for p in await aclient.chat(model="ollama/long", messages=USER, stream=True)
        ]
    assert "".join(p.message.content or "" for p in parts) == "".join(SCENARIOS["long"].pieces)
    assert parts[-1].done is True and parts[-1].eval_count == 200


@pytest.mark.timeout(30)
@pytest.mark.parametrize("upstream_name", ["ollama", "openai"])
def test_chat_tool_calls(client: ollama.Client, upstream_name: str) -> None:
    model = f"{upstream_name}/tools"
    parts = list(client.chat(model=model, messages=USER, tools=TOOLS, stream=True))
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == EXPECTED_CALLS
    assert "".join(p.message.content or "" for p in parts) == "Let me check the weather."
    assert parts[-1].done_reason == "stop"  # as Ollama reports a turn that called tools
    done = client.chat(model=model, messages=USER, tools=TOOLS)
    calls = list(done.message.tool_calls or [])
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == EXPECTED_CALLS
    assert done.message.content == "Let me check the weather."


async def test_options_are_mapped(aclient: ollama.AsyncClient, upstream: UpstreamServer) -> None:
    upstream.add("ol_options", Scenario())
    options = {"temperature": 0.2, "top_p": 0.5, "num_predict": 20, "stop": ["zz"], "seed": 3}
    async with asyncio.timeout(15):
        await aclient.chat(model="ollama/ol_options", messages=USER, options=options)
        await aclient.generate(model="openai/ol_options", prompt="hi", options=options)
    ollama_body, openai_body = [r.body for r in upstream.requests if r.scenario == "ol_options"]
    assert ollama_body["options"] == options
    assert ollama_body["messages"] == USER
    assert openai_body["prompt"] == "hi"
    assert (openai_body["temperature"], openai_body["top_p"]) == (0.2, 0.5)
    assert (openai_body["max_tokens"], openai_body["stop"], openai_body["seed"]) == (20, ["zz"], 3)


# --- generate ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("upstream_name", ["ollama", "openai", "sse"])
def test_generate_streaming_and_not(client: ollama.Client, upstream_name: str) -> None:
    model = f"{upstream_name}/hello"
    parts = list(client.generate(model=model, prompt="hello", stream=True))
    assert "".join(p.response or "" for p in parts) == TEXT
    assert parts[-1].done is True and parts[-1].done_reason == "stop"
    assert all(p.done is False for p in parts[:-1])
    done = client.generate(model=model, prompt="hello")
    assert done.response == TEXT and done.done is True and done.model == model
    assert done.eval_count and done.eval_count > 0


@pytest.mark.timeout(30)
def test_nothing_to_generate_loads_the_model(client: ollama.Client) -> None:
    assert client.generate(model="ollama/hello").done_reason == "load"
    assert client.chat(model="ollama/hello", messages=[]).done_reason == "load"


# --- the wire, errors -------------------------------------------------------------------------


async def test_ndjson_on_the_wire_with_the_job_header(http: httpx.AsyncClient) -> None:
    body = {"model": "ollama/hello", "messages": USER}  # no "stream": Ollama streams by default
    async with asyncio.timeout(15):
        response = await http.post("/api/chat", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    job_id = response.headers["x-tokenrelay-job"]
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == TEXT
    job = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert job["text"] == TEXT and job["upstream"] == "ollama" and job["model"] == "hello"
    async with asyncio.timeout(15):
        single = await http.post("/api/generate", json={**body, "prompt": "x", "stream": False})
    assert single.headers["x-tokenrelay-job"].startswith("job_")
    assert single.json()["response"] == TEXT


async def test_a_cancelled_job_is_done_cancelled(
    http: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("ol_cancel", Scenario(pieces=[f"c{i} " for i in range(200)], delay_s=0.02))
    body = {"model": "ollama/ol_cancel", "prompt": "go"}
    async with asyncio.timeout(20), http.stream("POST", "/api/generate", json=body) as resp:
        buf = b""
        cancelled = False
        async for part in resp.aiter_bytes():
            buf += part
            if not cancelled and buf.count(b'"response":"c') >= 3:
                job_id = resp.headers["x-tokenrelay-job"]
                assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code in (200, 202)
                cancelled = True
    final = orjson.loads(buf.splitlines()[-1])
    assert final["done"] is True and final["done_reason"] == "cancelled"


@pytest.mark.timeout(30)
def test_errors(client: ollama.Client) -> None:
    # Mid-stream: an {"error": ...} line, which the client raises.
    text = ""
    with pytest.raises(ollama.ResponseError) as mid:
        for part in client.chat(model="ollama/error_mid", messages=USER, stream=True):
            text += part.message.content or ""
    assert text == "".join(HELLO[:3]) and "upstream_error" in str(mid.value.error)
    # Not streaming: an HTTP error in the contract's shape.
    with pytest.raises(ollama.ResponseError) as failed:
        client.generate(model="ollama/http500", prompt="x")
    assert failed.value.status_code == 503
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="nowhere/llama", messages=USER)
    assert unknown.value.status_code == 422
    assert isinstance(unknown.value.error, dict) and unknown.value.error["param"] == "model"
    with pytest.raises(ollama.ResponseError) as formatted:
        client.chat(model="ollama/hello", messages=USER, format="json")
    assert formatted.value.status_code == 422


# --- models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog_system(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API (no worker) with default models configured and API keys on."""
    upstreams = json.loads(system_env(upstream)["TOKENRELAY_UPSTREAMS"])
    upstreams["ollama"]["default_model"] = "llama-test"
    upstreams["sse"]["default_model"] = "gen-test"
    env = system_env(upstream, TOKENRELAY_API_KEYS="key-1")
    env["TOKENRELAY_UPSTREAMS"] = json.dumps(upstreams)
    workdir = tmp_path_factory.mktemp("ollama-catalog")
    with redis_dbs.database() as url, relay_system(workdir, url, env, workers=0) as sys_:
        yield sys_


@pytest.mark.timeout(30)
def test_list_names_each_upstreams_default_model(catalog_system: RelaySystem) -> None:
    headers = {"Authorization": "Bearer key-1"}
    with ollama.Client(host=catalog_system.base_url, headers=headers, timeout=10) as keyed:
        listed = keyed.list()
    assert [m.model for m in listed.models] == ["ollama/llama-test", "sse/gen-test"]
    assert all(m.modified_at is not None and m.details is not None for m in listed.models)
    with ollama.Client(host=catalog_system.base_url, timeout=10) as anonymous:
        with pytest.raises(ollama.ResponseError) as refused:
            anonymous.list()
    assert refused.value.status_code == 401
