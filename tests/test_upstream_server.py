"""Tests for the scripted upstream server through httpx streaming clients on real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.upstream_server import HELLO, UpstreamServer

HELLO_TEXT = "".join(HELLO)
ROUTES = [
    "/api/chat",
    "/api/generate",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/generate/stream",
]


@pytest.fixture(scope="module")
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer() as srv:
        yield srv


@pytest.fixture
def client(server: UpstreamServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        yield c


def request_body(path: str, scenario: str) -> dict[str, Any]:
    if path == "/v1/generate/stream":
        return {"prompt": scenario, "maxTokens": 50, "temperature": 0.5}
    body: dict[str, Any] = {"model": scenario, "stream": True}
    if path.endswith(("/chat", "/chat/completions")):
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    if path.startswith("/v1/") and path != "/v1/generate/stream":
        body["stream_options"] = {"include_usage": True}
    return body


def parse(path: str, raw: bytes) -> list[Any]:
    """Payloads of an NDJSON or SSE body; tolerates every quirk of the weird scenario."""
    lines = raw.decode().replace("\r\n", "\n").split("\n")
    if path.startswith("/api/"):
        return [json.loads(line) for line in lines if line]
    events: list[Any] = []
    data: list[str] = []
    for line in [*lines, ""]:
        if not line and data:
            joined = "\n".join(data)
            events.append(joined if joined == "[DONE]" else json.loads(joined))
            data = []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    return events


def stream(client: httpx.Client, path: str, scenario: str) -> tuple[httpx.Response, list[bytes]]:
    with client.stream("POST", path, json=request_body(path, scenario)) as response:
        return response, list(response.iter_raw())


def check_format(path: str, payloads: list[Any]) -> str:
    """Assert the documented shape of each wire format and return the streamed text."""
    if path.startswith("/api/"):
        *deltas, final = payloads
        key = "message" if path == "/api/chat" else "response"
        assert all(p["done"] is False and p["model"] == "hello" for p in deltas)
        assert final["done"] is True and final["done_reason"] == "stop"
        assert final["eval_count"] == len(HELLO) and final["prompt_eval_count"] == 7
        for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            assert isinstance(final[name], int) and final[name] > 0
        if key == "message":
            assert final["message"] == {"role": "assistant", "content": ""}
            return "".join(p["message"]["content"] for p in deltas)
        assert final["response"] == ""
        return "".join(p["response"] for p in deltas)
    assert payloads[-1] == "[DONE]"
    if path == "/v1/generate/stream":
        events = payloads[:-1]
        assert events[-1]["finishReason"] == "stop"
        assert all("finishReason" not in e for e in events[:-1])
        assert events[-1]["text"] == "".join(e["delta"] for e in events)
        return str(events[-1]["text"])
    *chunks, finish, usage, _ = payloads
    chat = path == "/v1/chat/completions"
    assert all(
        c["object"] == ("chat.completion.chunk" if chat else "text_completion") for c in chunks
    )
    assert all(c["usage"] is None for c in [*chunks, finish])
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    if not chat:
        return "".join(c["choices"][0]["text"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    return "".join(c["choices"][0]["delta"]["content"] for c in chunks)


@pytest.mark.parametrize("path", ROUTES)
def test_hello_in_documented_format(
    client: httpx.Client, server: UpstreamServer, path: str
) -> None:
    response, reads = stream(client, path, "hello")
    kind = "application/x-ndjson" if path.startswith("/api/") else "text/event-stream"
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    raw = b"".join(reads)
    assert "日本語".encode() in raw and b"\\u" not in raw  # raw UTF-8, not \u escapes
    assert check_format(path, parse(path, raw)) == HELLO_TEXT
    assert server.requests[-1].path == path and server.requests[-1].scenario == "hello"


@pytest.mark.parametrize("path", ROUTES)
def test_weird_framing_parses_to_same_text(client: httpx.Client, path: str) -> None:
    _, reads = stream(client, path, "weird")
    raw = b"".join(reads)
    assert len(reads) > 3 * len(HELLO)
    assert any(not _is_utf8(r) for r in reads)  # some reads end inside a multi-byte character
    assert b"\r\n" in raw and not raw.endswith(b"\n")
    payloads = parse(path, raw)
    if not path.startswith("/api/"):
        assert raw.count(b"data:") > len(payloads)  # multi-line data fields
    assert check_format(path, [_rename(p, "weird", "hello") for p in payloads]) == HELLO_TEXT


def test_tool_call_fragments(client: httpx.Client) -> None:
    _, reads = stream(client, "/v1/chat/completions", "tools")
    payloads = parse("/v1/chat/completions", b"".join(reads))
    calls: dict[int, dict[str, str]] = {}
    for chunk in payloads[:-1]:
        for tc in chunk["choices"][0]["delta"].get("tool_calls", []) if chunk["choices"] else []:
            if "id" in tc:
                calls[tc["index"]] = {"id": tc["id"], "name": tc["function"]["name"], "args": ""}
            calls[tc["index"]]["args"] += tc["function"]["arguments"]
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["args"]) == {"location": "Berlin", "unit": "celsius"}
    assert payloads[-3]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("path", "error"), [("/v1/chat/completions", dict), ("/api/chat", str)])
def test_http500_is_json(client: httpx.Client, path: str, error: type) -> None:
    response = client.post(path, json=request_body(path, "http500"))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["error"], error)


def test_drop_leaves_body_incomplete(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        stream(client, "/api/chat", "drop")


def test_disconnect_is_detected(client: httpx.Client, server: UpstreamServer) -> None:
    with client.stream("POST", "/api/generate", json=request_body("/api/generate", "slow")) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["response"] == "s0 "
    assert server.wait_for_disconnect("slow")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _rename(payload: Any, old: str, new: str) -> Any:
    if isinstance(payload, dict) and payload.get("model") == old:
        return {**payload, "model": new}
    return payload
