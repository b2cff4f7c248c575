"""The AI SDK's chat transport (``useChat({ resume: true })``) over real processes: the stream
and its routes over HTTP here, and the real ``ai`` package (the current major and 5.x) in Node
(``tests/js/aisdk``) against the same system."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from tests.support.servers import RedisDatabases
from tests.support.system import ROOT, RelaySystem, relay_system, system_env
from tests.upstream_server import HELLO, Scenario, UpstreamServer

JS_DIR = ROOT / "tests" / "js" / "aisdk"
NODE_TIMEOUT_S = 300
NODE_TESTS = 20  # 10 for each version of `ai`
CHAT = "/v1/ai-sdk/chat"
PAGE = "http://page.example:5173"
RATE_LIMIT = 2
STREAM_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "connection": "keep-alive",
    "x-accel-buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}


def body(model: str, *texts: str, chat_id: str | None = None) -> dict[str, Any]:
    messages = [
        {"id": f"u{i}", "role": "user", "parts": [{"type": "text", "text": text}]}
        for i, text in enumerate(texts)
    ]
    return {
        "id": chat_id or f"chat-{uuid.uuid4()}",
        "messages": messages,
        "trigger": "submit-message",
        "model": model,
    }


def parts(raw: bytes) -> list[Any]:
    """The ``data:`` payloads of a whole SSE body, ``[DONE]`` as the string."""
    out: list[Any] = []
    for frame in raw.decode().split("\n\n"):
        for line in frame.splitlines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture
async def http(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=15) as c:
        yield c


async def test_an_answer_is_a_ui_message_stream(http: httpx.AsyncClient) -> None:
    sent = body("openai/hello", "hi")
    response = await http.post(CHAT, json=sent)
    assert response.status_code == 200, response.text
    for name, value in STREAM_HEADERS.items():
        assert response.headers[name] == value
    job_id = response.headers["x-tokenrelay-job"]
    got = parts(response.content)
    assert got[:3] == [
        {"type": "start", "messageId": f"msg_{job_id}"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text_0"},
    ]
    assert got[3:-4] == [{"type": "text-delta", "id": "text_0", "delta": d} for d in HELLO]
    assert got[-4:] == [
        {"type": "text-end", "id": "text_0"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]
    # The answer ended: nothing to resume.
    again = await http.get(f"{CHAT}/{sent['id']}/stream")
    assert again.status_code == 204 and again.content == b""


async def test_a_tool_call_streams_its_input(http: httpx.AsyncClient) -> None:
    got = parts((await http.post(CHAT, json=body("openai/tools", "weather?"))).content)
    calls = [p for p in got if p != "[DONE]" and p["type"].startswith("tool-input")]
    starts = [p for p in calls if p["type"] == "tool-input-start"]
    assert starts == [
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "get_weather"},
        {"type": "tool-input-start", "toolCallId": "call_2", "toolName": "get_time"},
    ]
    typed = "".join(
        p["inputTextDelta"]
        for p in calls
        if p["type"] == "tool-input-delta" and p["toolCallId"] == "call_1"
    )
    assert json.loads(typed) == {"location": "Berlin", "unit": "celsius"}
    available = [p for p in calls if p["type"] == "tool-input-available"]
    assert [(p["toolName"], p["input"]) for p in available] == [
        ("get_weather", {"location": "Berlin", "unit": "celsius"}),
        ("get_time", {"timezone": "Europe/Berlin", "format": "24h"}),
    ]
    assert got[-2:] == [{"type": "finish", "finishReason": "tool-calls"}, "[DONE]"]


async def test_cancel_stops_the_generation_on_the_server(http: httpx.AsyncClient) -> None:
    sent = body("openai/slow", "tell me")
    async with http.stream("POST", CHAT, json=sent) as response:
        job_id = response.headers["x-tokenrelay-job"]
        seen = b""
        cancelled = None
        async with asyncio.timeout(30):
            async for piece in response.aiter_bytes():
                seen += piece
                if cancelled is None and seen.count(b'"text-delta"') >= 3:
                    cancelled = await http.post(f"{CHAT}/{sent['id']}/cancel")
    assert cancelled is not None and cancelled.status_code == 202, cancelled
    assert cancelled.json()["id"] == job_id
    got = parts(seen)
    assert got[-3:] == [{"type": "finish-step"}, {"type": "abort", "reason": "cancelled"}, "[DONE]"]
    assert len([p for p in got if p != "[DONE]" and p["type"] == "text-delta"]) < 50
    record = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert record["status"] == "cancelled"
    assert record["finish_reason"] == "cancelled"
    assert (await http.get(f"{CHAT}/{sent['id']}/stream")).status_code == 204


async def test_tools_and_options_reach_the_upstream(
    http: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    marker = f"options {uuid.uuid4()}"
    sent = {**body("openai/hello", marker), "tools": [tool], "max_tokens": 99, "temperature": 0.5}
    assert (await http.post(CHAT, json=sent)).status_code == 200
    (received,) = [
        r.body
        for r in upstream.requests
        if isinstance(r.body, dict) and r.body.get("messages", [{}])[-1].get("content") == marker
    ]
    assert received["tools"] == [tool]
    assert received["max_tokens"] == 99
    assert received["temperature"] == 0.5
    assert received["model"] == "hello"


async def test_an_answer_outlives_the_api_process(
    tmp_path: Path, redis_db: str, upstream: UpstreamServer
) -> None:
    """The API process that started an answer is killed mid-answer; another API process of
    the deployment resumes all of it."""
    env = system_env(upstream)
    with (
        relay_system(tmp_path / "other", redis_db, env, workers=0) as other,
        relay_system(tmp_path / "first", redis_db, env) as first,
    ):
        sent = body("openai/slow", "tell me")
        async with httpx.AsyncClient(base_url=first.base_url, timeout=15) as http:
            async with http.stream("POST", CHAT, json=sent) as response:
                seen = b""
                async with asyncio.timeout(30):
                    async for piece in response.aiter_bytes():
                        seen += piece
                        if seen.count(b'"text-delta"') >= 3:
                            break
        assert first.api is not None
        first.api.send_signal(signal.SIGKILL)
        first.api.wait(10)
        async with httpx.AsyncClient(base_url=other.base_url, timeout=15) as http:
            resumed = await http.get(f"{CHAT}/{sent['id']}/stream")
        assert resumed.status_code == 200
        got = parts(resumed.content)
        before = parts(seen[: seen.rindex(b"\n\n") + 2])  # whole frames
        assert len(before) >= 5 and got[: len(before)] == before
        text = "".join(p["delta"] for p in got if p != "[DONE]" and p["type"] == "text-delta")
        assert text == "".join(f"s{i} " for i in range(50))
        assert got[-2:] == [{"type": "finish", "finishReason": "stop"}, "[DONE]"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"id": ""}, "id: String should have at least 1 character"),
        (
            {"messages": [{"role": "user", "parts": [{"type": "text"}]}]},
            "messages[0].parts[0]: a text part needs 'text', a string",
        ),
        ({"messages": [{"role": "user", "parts": []}]}, "no message has a text or tool part"),
        ({"model": "nowhere/x"}, "unknown upstream 'nowhere'"),
        ({"temperature": "hot"}, "temperature"),
    ],
)
async def test_bad_input_is_a_json_error(
    http: httpx.AsyncClient, change: dict[str, Any], message: str
) -> None:
    response = await http.post(CHAT, json={**body("openai/hello", "hi"), **change})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert message in error["message"]
    assert "Traceback" not in response.text


async def test_a_chat_without_generation(http: httpx.AsyncClient) -> None:
    chat_id = f"never-{uuid.uuid4()}"
    assert (await http.get(f"{CHAT}/{chat_id}/stream")).status_code == 204
    missing = await http.post(f"{CHAT}/{chat_id}/cancel")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"no chat '{chat_id}'"


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API with keys ``key-a`` and ``key-b`` (``RATE_LIMIT`` jobs a minute each), pages from
    ``PAGE`` allowed (CORS), and no worker: its jobs stay queued."""
    env = system_env(
        upstream,
        TOKENRELAY_API_KEYS="key-a,key-b",
        TOKENRELAY_CORS_ORIGINS=PAGE,
        TOKENRELAY_RATE_LIMIT_PER_MIN=str(RATE_LIMIT),
    )
    workdir: Path = tmp_path_factory.mktemp("aisdk_keyed")
    with redis_dbs.database() as url, relay_system(workdir, url, env, workers=0) as system:
        yield system


async def test_a_chat_is_its_keys(keyed: RelaySystem) -> None:
    """Chats are per API key: another key's chat of the same id is another chat. It cannot
    follow nor stop the first key's generation (204: nothing of its own runs; cancel 404), and
    its own generation under that id leaves the first key's alone."""
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    chat_id = f"team/{uuid.uuid4()} ü"  # any id the app makes: the SDK encodes it in the URL
    sent = body("openai/hello", "hi", chat_id=chat_id)
    chat = f"{CHAT}/{quote(chat_id, safe='')}"
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=15) as http:
        async with http.stream("POST", CHAT, json=sent, headers=a) as response:
            assert response.status_code == 200
            job_id = response.headers["x-tokenrelay-job"]
        followed_by_b = await http.get(f"{chat}/stream", headers=b)
        assert followed_by_b.status_code == 204, followed_by_b.text
        assert "x-tokenrelay-job" not in followed_by_b.headers
        cancelled_by_b = await http.post(f"{chat}/cancel", headers=b)
        assert cancelled_by_b.status_code == 404, cancelled_by_b.text
        assert cancelled_by_b.json()["error"]["type"] == "not_found_error"
        assert (await http.get(f"/v1/jobs/{job_id}", headers=a)).json()["status"] == "queued"
        async with http.stream("POST", CHAT, json=sent, headers=b) as response:
            assert response.status_code == 200  # key-b's own chat of that id
            b_job = response.headers["x-tokenrelay-job"]
        assert b_job != job_id
        assert (await http.get(f"{chat}/stream")).status_code == 401
        for key, expected in ((a, job_id), (b, b_job)):
            async with http.stream("GET", f"{chat}/stream", headers=key) as followed:
                assert followed.status_code == 200  # queued: running from the chat's view
                assert followed.headers["x-tokenrelay-job"] == expected
        cancelled = await http.post(f"{chat}/cancel", headers=a)
        assert cancelled.status_code == 202
        assert cancelled.json()["id"] == job_id
        assert cancelled.json()["status"] == "cancelled"
        assert (await http.get(f"{chat}/stream", headers=a)).status_code == 204
        assert (await http.get(f"/v1/jobs/{b_job}", headers=b)).json()["status"] == "queued"


async def test_the_rate_limit_is_a_json_error_with_retry_after(keyed: RelaySystem) -> None:
    b = {"Authorization": "Bearer key-b"}
    statuses = []
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=15) as http:
        # At most RATE_LIMIT a minute: a 429 within twice that and one, even across a minute.
        for _ in range(2 * RATE_LIMIT + 1):
            async with http.stream("POST", CHAT, json=body("openai/hello", "hi"), headers=b) as r:
                statuses.append(r.status_code)
                if r.status_code == 429:
                    await r.aread()
                    assert int(r.headers["retry-after"]) >= 1
                    assert r.json()["error"]["type"] == "rate_limit_error"
                    break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses


async def test_a_page_of_an_allowed_origin_may_call(
    keyed: RelaySystem, http: httpx.AsyncClient
) -> None:
    """CORS for a front end on another origin (``TOKENRELAY_CORS_ORIGINS``): the preflight of
    the transport's POST with a key, the answer's headers readable; other origins refused."""
    preflight = {
        "Origin": PAGE,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=15) as c:
        allowed = await c.options(CHAT, headers=preflight)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == PAGE
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert allowed.headers["access-control-allow-headers"] == "authorization,content-type"
        refused = await c.options(CHAT, headers={**preflight, "Origin": "http://evil.example"})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        chat_id = f"never-{uuid.uuid4()}"
        headers = {"Origin": PAGE, "Authorization": "Bearer key-a"}
        answered = await c.get(f"{CHAT}/{chat_id}/stream", headers=headers)
        assert answered.status_code == 204
        assert answered.headers["access-control-allow-origin"] == PAGE
        assert "x-tokenrelay-job" in answered.headers["access-control-expose-headers"].lower()
    # Off unless configured: the session system sends no CORS headers.
    plain = await http.options(CHAT, headers=preflight)
    assert "access-control-allow-origin" not in plain.headers


def test_the_ai_sdk_in_node(system: RelaySystem, upstream: UpstreamServer) -> None:
    """``node --test`` in tests/js/aisdk: the current major of ``ai`` and 5.x, each through
    ``DefaultChatTransport`` and a ``Chat`` resuming mid-answer."""
    assert (JS_DIR / "node_modules" / "ai").is_dir(), "run `make js` (npm ci in tests/js/aisdk)"
    upstream.add("pause", Scenario(pieces=HELLO, first_delay_s=1.5))  # keep-alives first
    nonce = uuid.uuid4().hex
    env = {**os.environ, "TOKENRELAY_URL": system.base_url, "NONCE": nonce}
    done = subprocess.run(
        ["node", "--test", "--test-reporter=tap"],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    report = f"{done.stdout}\n{done.stderr}"
    print(report)
    assert done.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", done.stdout, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) >= NODE_TESTS, report

    # The second turn reached the upstream as a conversation: the question, the answer with
    # its tool calls, each tool's result, the new question.
    for label in ("ai-current", "ai5"):
        last = f"second turn {label} {nonce}"
        (sent,) = [
            r.body
            for r in upstream.requests
            if isinstance(r.body, dict) and r.body.get("messages", [{}])[-1].get("content") == last
        ]
        messages = sent["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
        assert messages[0]["content"] == "what is the weather"
        assistant = messages[1]
        assert assistant["content"] == "Let me check the weather."
        assert [
            (c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for c in assistant["tool_calls"]
        ] == [
            ("call_1", "get_weather", {"location": "Berlin", "unit": "celsius"}),
            ("call_2", "get_time", {"timezone": "Europe/Berlin", "format": "24h"}),
        ]
        assert [(m["tool_call_id"], json.loads(m["content"])) for m in messages[2:4]] == [
            ("call_1", {"result": "call_1 done"}),
            ("call_2", {"result": "call_2 done"}),
        ]


CONTINUED = {
    "id": "asst-continued-1",
    "role": "assistant",
    "parts": [
        {"type": "step-start"},
        {"type": "text", "text": "Let me check the weather."},
        {
            "type": "tool-get_weather",
            "toolCallId": "call_1",
            "state": "output-available",
            "input": {"location": "Berlin"},
            "output": {"celsius": 21},
        },
    ],
}
"""An assistant message whose tool ran on the client: the next request continues it."""

PRIOR_CHUNKS = [
    {"type": "start-step"},
    {"type": "text-start", "id": "prior_1"},
    {"type": "text-delta", "id": "prior_1", "delta": "Let me check the weather."},
    {"type": "text-end", "id": "prior_1"},
    {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "get_weather"},
    {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"location":"Berlin"}'},
    {"type": "tool-output-available", "toolCallId": "call_1", "output": {"celsius": 21}},
    {"type": "finish-step"},
]
"""The continued message's earlier parts as a resume replays them: no ``tool-input-available``
(on which a client would run the tool again)."""


async def test_a_continued_message_keeps_its_id_and_a_resume_replays_all_of_it(
    http: httpx.AsyncClient,
) -> None:
    """The last UI message is the assistant's, its tool output filled in: the answer continues
    that message (``start`` names its id) with the new parts only; a resume (which the client
    starts afresh) gets the whole message: its earlier parts, then the new ones."""
    sent = body("openai/slow", "weather in Berlin?")
    sent["messages"].append(CONTINUED)
    async with http.stream("POST", CHAT, json=sent) as response:
        assert response.status_code == 200
        seen = b""
        async with asyncio.timeout(30):
            async for piece in response.aiter_bytes():
                seen += piece
                if seen.count(b'"text-delta"') >= 3:
                    break
    first = parts(seen[: seen.rindex(b"\n\n") + 2])
    assert first[:3] == [
        {"type": "start", "messageId": "asst-continued-1"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text_0"},
    ]
    async with asyncio.timeout(30):
        resumed = await http.get(f"{CHAT}/{sent['id']}/stream")
    assert resumed.status_code == 200
    whole = parts(resumed.content)
    assert whole[0] == {"type": "start", "messageId": "asst-continued-1"}
    assert whole[1 : 1 + len(PRIOR_CHUNKS)] == PRIOR_CHUNKS
    new = whole[1 + len(PRIOR_CHUNKS) :]
    assert new[: len(first) - 1] == first[1:]
    text = "".join(p["delta"] for p in new if p != "[DONE]" and p["type"] == "text-delta")
    assert text == "".join(f"s{i} " for i in range(50))
    assert not [p for p in whole if p != "[DONE]" and p["type"] == "tool-input-available"]
    assert whole[-2:] == [{"type": "finish", "finishReason": "stop"}, "[DONE]"]


async def test_a_regenerated_answer_is_a_new_message(http: httpx.AsyncClient) -> None:
    sent = {**body("openai/hello", "hi"), "trigger": "regenerate-message"}
    sent["messages"].append(CONTINUED)
    response = await http.post(CHAT, json=sent)
    job_id = response.headers["x-tokenrelay-job"]
    assert parts(response.content)[0] == {"type": "start", "messageId": f"msg_{job_id}"}
