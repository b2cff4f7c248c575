"""Bad requests to every endpoint: each is answered with the contract's JSON error, never a 5xx.

Every case asserts the exact status, that the body is exactly
``{"error": {"type": str, "message": str, "param": str | None}}`` with the type the status
implies, that it is ``application/json`` and that no stack trace leaks. The last tests check that
every documented operation has cases here and that the service is healthy afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.helpers import assert_well_formed, collect, submit, texts
from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import UpstreamServer

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
}
ANY = object()  # the case does not pin `param`
UNSET = object()  # no JSON body
UNKNOWN_JOB = "job_" + "A" * 22  # well-formed, never issued
CHAT = [{"role": "user", "content": "hi"}]
JSON = {"Content-Type": "application/json"}
BIG = b'{"model":"hello","prompt":"' + b"x" * (10 * 1024 * 1024) + b'"}'  # 10 MB of JSON


@dataclass(frozen=True)
class Bad:
    """One bad request and the error it must get.

    ``path`` and header values may hold ``{job}`` (a finished job of the open system),
    ``{other}`` (a job of ``key-a`` on the keyed system) and ``{idem}`` (an Idempotency-Key
    already used with another body). ``keyed`` sends it to the system with API keys, as
    ``key`` (none: no Authorization header).
    """

    op: str  # "METHOD /path/{template}" as in the OpenAPI document
    status: int
    path: str
    json: Any = UNSET
    content: bytes | None = field(default=None, repr=False)
    chunked: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    param: Any = ANY
    keyed: bool = False
    key: str | None = None


def case(
    op: str, name: str, status: int, *, bug: str | None = None, path: str | None = None, **kw: Any
) -> Any:
    """A ``pytest.param`` named ``"<op>: <name>"``; ``bug`` marks a known server bug (xfail)."""
    template = op.split(" ", 1)[1]
    if path is None:
        path = template.replace("{job_id}", "{job}").replace("{completion_id}", "{job}")
    marks = [pytest.mark.xfail(strict=True, reason=f"bug: {bug}")] if bug else []
    return pytest.param(Bad(op, status, path, **kw), id=f"{op}: {name}", marks=marks)


def jobs(name: str, status: int, body: Any = UNSET, **kw: Any) -> Any:
    """A bad ``POST /v1/jobs``."""
    return case("POST /v1/jobs", name, status, json=body, **kw)


def job(**fields: Any) -> dict[str, Any]:
    """A valid job body (a prompt to the default upstream) with ``fields`` changed."""
    return {"model": "hello", "prompt": "hi", **fields}


def chat_job(**fields: Any) -> dict[str, Any]:
    return {"model": "hello", "messages": CHAT, **fields}


def resp(**fields: Any) -> dict[str, Any]:
    """A valid ``POST /v1/responses`` body with ``fields`` changed."""
    return {"model": "hello", "input": "hi", **fields}


def opts(**options: Any) -> dict[str, Any]:
    return job(options=options)


def raw(text: str) -> bytes:
    return text.encode()


def ui_chat(**fields: Any) -> dict[str, Any]:
    """A valid ``POST /v1/ai-sdk/chat`` body with ``fields`` changed."""
    user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
    return {"id": "chat-1", "model": "hello", "messages": [user], **fields}


EVENTS = "GET /v1/jobs/{job_id}/events"
AI_CHAT = "POST /v1/ai-sdk/chat"
RESPONSE = "GET /v1/responses/{response_id}"
CHAT_EVENTS = "GET /v1/chat/completions/{completion_id}/events"

CASES = [
    # --- POST /v1/jobs: wrong JSON types, field by field -------------------------------------
    jobs("upstream is a number", 422, job(upstream=5), param="upstream"),
    jobs("model is a number", 422, job(model=5), param="model"),
    jobs("messages is a string", 422, chat_job(messages="hi"), param="messages"),
    jobs("messages is an object", 422, chat_job(messages={"role": "user"}), param="messages"),
    jobs("a message is a number", 422, chat_job(messages=[1]), param="messages.0"),
    jobs("a role is a number", 422, chat_job(messages=[{"role": 5}]), param="messages.0.role"),
    jobs(
        "a message content is a number",
        422,
        chat_job(messages=[{"role": "user", "content": 5}]),
        param="messages.0.content",
    ),
    jobs("prompt is a number", 422, job(prompt=5), param="prompt"),
    jobs("prompt is a list", 422, job(prompt=["hi"]), param="prompt"),
    jobs("options is a string", 422, job(options="hot"), param="options"),
    jobs("tools is an object", 422, chat_job(tools={}), param="tools"),
    jobs("a tool is a number", 422, chat_job(tools=[1]), param="tools.0"),
    jobs("metadata is a list", 422, job(metadata=[]), param="metadata"),
    jobs("metadata value is an object", 422, job(metadata={"a": {"b": 1}})),
    jobs("metadata value is a list", 422, job(metadata={"a": [1]})),
    jobs("temperature is a word", 422, opts(temperature="hot"), param="options.temperature"),
    jobs("top_p is a list", 422, opts(top_p=[]), param="options.top_p"),
    jobs("max_tokens is a word", 422, opts(max_tokens="five"), param="options.max_tokens"),
    jobs("max_tokens is a fraction", 422, opts(max_tokens=1.5), param="options.max_tokens"),
    jobs("seed is a fraction", 422, opts(seed=1.5), param="options.seed"),
    jobs("seed is a word", 422, opts(seed="x"), param="options.seed"),
    jobs("stop is a number", 422, opts(stop=5), param="options.stop"),
    jobs("stop holds a number", 422, opts(stop=[5]), param="options.stop.0"),
    jobs("temperature is a numeric string", 422, opts(temperature="0.5")),
    jobs("max_tokens is a boolean", 422, opts(max_tokens=True)),
    jobs("seed is a numeric string", 422, opts(seed="7")),
    # --- missing, both, neither, unknown ----------------------------------------------------
    jobs("empty object", 422, {}, param=None),
    jobs("neither messages nor prompt", 422, {"model": "hello"}, param=None),
    jobs("both messages and prompt", 422, job(messages=CHAT), param=None),
    jobs("prompt null and no messages", 422, job(prompt=None), param=None),
    jobs("messages null and no prompt", 422, chat_job(messages=None), param=None),
    jobs("empty messages", 422, chat_job(messages=[]), param="messages"),
    jobs("a message without role", 422, chat_job(messages=[{"content": "x"}])),
    jobs("unknown role", 422, chat_job(messages=[{"role": "wizard", "content": "x"}])),
    jobs("empty role", 422, chat_job(messages=[{"role": "", "content": "x"}])),
    jobs("unknown top-level field", 422, job(stream=True), param="stream"),
    jobs("unknown option", 422, opts(top_k=5), param="options.top_k"),
    jobs("unknown upstream", 422, job(upstream="nope"), param="upstream"),
    jobs("empty upstream", 422, job(upstream=""), param="upstream"),
    jobs("empty model", 422, job(model=""), param="model"),
    jobs("model of 257 characters", 422, job(model="m" * 257), param="model"),
    jobs("messages to an sse upstream", 422, chat_job(upstream="sse"), param="messages"),
    jobs("tools with a prompt", 422, job(tools=[{"type": "function"}]), param=None),
    jobs("no model for ollama", 422, {"upstream": "ollama", "prompt": "x"}, param="model"),
    # --- out-of-range options ---------------------------------------------------------------
    jobs("temperature -1", 422, opts(temperature=-1), param="options.temperature"),
    jobs("temperature 3", 422, opts(temperature=3), param="options.temperature"),
    jobs(
        "temperature NaN",
        422,
        content=raw('{"model":"hello","prompt":"x","options":{"temperature":NaN}}'),
        headers=JSON,
        param="options.temperature",
    ),
    jobs(
        "temperature 1e999",
        422,
        content=raw('{"model":"hello","prompt":"x","options":{"temperature":1e999}}'),
        headers=JSON,
        param="options.temperature",
    ),
    jobs("top_p 2", 422, opts(top_p=2), param="options.top_p"),
    jobs("top_p -0.1", 422, opts(top_p=-0.1), param="options.top_p"),
    jobs("max_tokens 0", 422, opts(max_tokens=0), param="options.max_tokens"),
    jobs("max_tokens -1", 422, opts(max_tokens=-1), param="options.max_tokens"),
    jobs("max_tokens ten million", 422, opts(max_tokens=10**7), param="options.max_tokens"),
    jobs("seed 2**64", 422, opts(seed=2**64), param="options.seed"),
    jobs("seed below -2**63", 422, opts(seed=-(2**63) - 1), param="options.seed"),
    # --- stop sequences ---------------------------------------------------------------------
    jobs("17 stop sequences", 422, opts(stop=[str(i) for i in range(17)]), param="options.stop"),
    jobs("an empty stop sequence", 422, opts(stop=[""]), param="options.stop"),
    jobs("stop is an empty string", 422, opts(stop=""), param="options.stop"),
    jobs("a stop of 257 characters", 422, opts(stop=["s" * 257]), param="options.stop"),
    # --- metadata ---------------------------------------------------------------------------
    jobs(
        "metadata with 65 keys",
        422,
        job(metadata={f"k{i}": "v" for i in range(65)}),
        param="metadata",
    ),
    jobs("metadata over 16 KiB", 422, job(metadata={"a": "x" * 17_000}), param="metadata"),
    # --- bodies that are not what they claim ------------------------------------------------
    jobs("body is not JSON", 400, content=b"hello", headers=JSON, param=None),
    jobs("body is truncated JSON", 400, content=b'{"prompt": ', headers=JSON, param=None),
    jobs("body is invalid UTF-8", 400, content=b'{"prompt":"\xff\xfe"}', headers=JSON),
    jobs(
        "body is JSON nested 100000 deep",
        400,
        content=raw('{"prompt":"x","tools":[' + "[" * 100_000 + "]" * 100_000 + "]}"),
        headers=JSON,
    ),
    jobs("body is a JSON array", 422, [job()], param=None),
    jobs("body is a JSON string", 422, "hi", param=None),
    jobs("body is JSON null", 422, content=b"null", headers=JSON, param=None),
    jobs("body is a JSON number", 422, 42, param=None),
    jobs(
        "body is empty",
        400,
        content=b"",
        headers=JSON,
        param=None,
    ),
    jobs(
        "content type is text/plain",
        422,
        content=orjson.dumps(job()),
        headers={"Content-Type": "text/plain"},
        param=None,
    ),
    jobs(
        "content type is a form",
        422,
        content=b"model=hello&prompt=hi",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        param=None,
    ),
    jobs(
        "a lone surrogate in the prompt",
        422,
        content=raw('{"model":"hello","prompt":"\\ud800"}'),
        headers=JSON,
    ),
    jobs(
        "a lone surrogate in metadata",
        422,
        content=raw('{"model":"hello","prompt":"x","metadata":{"a":"\\udc00"}}'),
        headers=JSON,
    ),
    jobs(
        "a lone surrogate in a stop sequence",
        422,
        content=raw('{"model":"hello","prompt":"x","options":{"stop":["\\ud800"]}}'),
        headers=JSON,
    ),
    jobs(
        "a 10 MB body",
        413,
        content=BIG,
        headers=JSON,
        param=None,
    ),
    jobs(
        "a 10 MB chunked body",
        413,
        content=BIG,
        chunked=True,
        headers=JSON,
        param=None,
    ),
    # --- Idempotency-Key --------------------------------------------------------------------
    jobs(
        "Idempotency-Key reused with another body",
        409,
        job(prompt="second"),
        headers={"Idempotency-Key": "{idem}"},
        param="Idempotency-Key",
    ),
    jobs(
        "Idempotency-Key of 256 characters",
        422,
        job(),
        headers={"Idempotency-Key": "k" * 256},
        param="Idempotency-Key",
    ),
    jobs("empty Idempotency-Key", 422, job(), headers={"Idempotency-Key": ""}),
    # --- GET /v1/jobs/{id} and POST /v1/jobs/{id}/cancel: unknown ids -----------------------
    case("GET /v1/jobs/{job_id}", "well-formed unknown id", 404, path=f"/v1/jobs/{UNKNOWN_JOB}"),
    case("GET /v1/jobs/{job_id}", "malformed id", 404, path="/v1/jobs/x"),
    case("GET /v1/jobs/{job_id}", "SQL-ish id", 404, path="/v1/jobs/1%27%3B%20DROP%20TABLE"),
    case("GET /v1/jobs/{job_id}", "unicode id", 404, path="/v1/jobs/j%C3%B6b_%F0%9F%92%A5"),
    case("GET /v1/jobs/{job_id}", "id of 5000 characters", 404, path="/v1/jobs/" + "a" * 5000),
    case("GET /v1/jobs/{job_id}", "id with a newline", 404, path="/v1/jobs/{job}%0A"),
    case(
        "POST /v1/jobs/{job_id}/cancel",
        "well-formed unknown id",
        404,
        path=f"/v1/jobs/{UNKNOWN_JOB}/cancel",
    ),
    case("POST /v1/jobs/{job_id}/cancel", "malformed id", 404, path="/v1/jobs/x/cancel"),
    # --- GET /v1/jobs/{id}/events: unknown jobs, bad resume points --------------------------
    case(EVENTS, "well-formed unknown id", 404, path=f"/v1/jobs/{UNKNOWN_JOB}/events"),
    case(EVENTS, "malformed id", 404, path="/v1/jobs/%27OR%201=1/events"),
    case(
        EVENTS,
        "unknown id asked as SSE",
        404,
        path=f"/v1/jobs/{UNKNOWN_JOB}/events",
        headers={"Accept": "text/event-stream"},
    ),
    case(
        EVENTS,
        "unknown id with a bad after",
        404,
        path=f"/v1/jobs/{UNKNOWN_JOB}/events",
        params={"after": "junk"},
    ),
    case(EVENTS, "after is junk", 400, params={"after": "garbage"}, param="after"),
    case(EVENTS, "after is SQL-ish", 400, params={"after": "1' OR '1'='1"}, param="after"),
    case(EVENTS, "after is an emoji", 400, params={"after": "\U0001f4a5"}, param="after"),
    case(EVENTS, "after is ms only", 400, params={"after": "1"}, param="after"),
    case(EVENTS, "after is negative", 400, params={"after": "-1-0"}, param="after"),
    case(EVENTS, "after is $", 400, params={"after": "$"}, param="after"),
    case(EVENTS, "after has a NUL", 400, params={"after": "1-0\x00"}, param="after"),
    case(
        EVENTS, "after is in the future", 400, params={"after": "99999999999999-0"}, param="after"
    ),
    case(
        EVENTS,
        "after is past 64 bits",
        400,
        params={"after": "18446744073709551616-0"},
        param="after",
    ),
    case(
        EVENTS,
        "after in Arabic-Indic digits",
        400,
        params={"after": "\u0661-\u0662"},
        param="after",
    ),
    case(
        EVENTS,
        "after with a trailing newline",
        400,
        params={"after": "1-0\n"},
        param="after",
    ),
    case(
        EVENTS,
        "Last-Event-ID is junk",
        400,
        headers={"Last-Event-ID": "garbage"},
        param="Last-Event-ID",
    ),
    case(
        EVENTS,
        "Last-Event-ID is in the future",
        400,
        headers={"Last-Event-ID": "99999999999999-5"},
        param="Last-Event-ID",
    ),
    case(
        EVENTS,
        "a bad after wins over a good Last-Event-ID",
        400,
        params={"after": "nope"},
        headers={"Last-Event-ID": "0-1"},
        param="after",
    ),
    # --- GET /v1/jobs (the listing) ---------------------------------------------------------
    case("GET /v1/jobs", "limit 0", 422, params={"limit": "0"}, param="limit"),
    case("GET /v1/jobs", "limit 101", 422, params={"limit": "101"}, param="limit"),
    case("GET /v1/jobs", "limit is a word", 422, params={"limit": "ten"}, param="limit"),
    case("GET /v1/jobs", "before is junk", 422, params={"before": "yesterday"}, param="before"),
    case(
        "GET /v1/jobs",
        "before in Arabic-Indic digits",
        422,
        params={"before": "\u0661\u0662\u0663"},
        param="before",
    ),
    # --- OpenAI-compatible routes -----------------------------------------------------------
    case("POST /v1/chat/completions", "n is 2", 422, json=chat_job(n=2), param="n"),
    case("POST /v1/chat/completions", "no model", 422, json={"messages": CHAT}, param="model"),
    case("POST /v1/chat/completions", "empty messages", 422, json=chat_job(messages=[]), param=ANY),
    case(
        "POST /v1/chat/completions",
        "unknown upstream prefix",
        422,
        json=chat_job(model="nope/m"),
        param="model",
    ),
    case(
        "POST /v1/chat/completions",
        "json_object response format",
        422,
        json=chat_job(response_format={"type": "json_object"}),
        param="response_format",
    ),
    case(
        "POST /v1/chat/completions",
        "temperature 9",
        422,
        json=chat_job(temperature=9),
        param="temperature",
    ),
    case(
        "POST /v1/chat/completions",
        "metadata value is a number",
        422,
        json=chat_job(metadata={"a": 1}),
        param="metadata.a",
    ),
    case("POST /v1/chat/completions", "body is not JSON", 400, content=b"{", headers=JSON),
    case(
        "POST /v1/chat/completions",
        "a lone surrogate in metadata",
        422,
        content=raw(
            '{"model":"m","messages":[{"role":"user","content":"x"}],'
            '"metadata":{"a":"\\ud800"},"background":true}'
        ),
        headers=JSON,
    ),
    case(
        "POST /v1/chat/completions",
        "a lone surrogate in a message",
        422,
        content=raw('{"model":"m","messages":[{"role":"user","content":"\\udfff"}]}'),
        headers=JSON,
    ),
    case(
        "POST /v1/completions",
        "two prompts",
        422,
        json={"model": "m", "prompt": ["a", "b"]},
        param="prompt",
    ),
    case(
        "POST /v1/completions",
        "an empty stop",
        422,
        json={"model": "m", "prompt": "x", "stop": [""]},
        param="stop",
    ),
    case("POST /v1/completions", "no prompt", 422, json={"model": "m"}, param="prompt"),
    case(
        "GET /v1/chat/completions/{completion_id}",
        "unknown id",
        404,
        path=f"/v1/chat/completions/chatcmpl-{UNKNOWN_JOB}",
    ),
    case(
        "GET /v1/completions/{completion_id}",
        "malformed id",
        404,
        path="/v1/completions/cmpl-%F0%9F%92%A5",
    ),
    case(CHAT_EVENTS, "after is junk", 400, params={"after": "zz"}, param="after"),
    case(
        CHAT_EVENTS,
        "include_usage is a word",
        422,
        params={"include_usage": "perhaps"},
        param="include_usage",
    ),
    case(
        CHAT_EVENTS,
        "unknown id",
        404,
        path=f"/v1/chat/completions/{UNKNOWN_JOB}/events",
    ),
    case(
        "GET /v1/completions/{completion_id}/events",
        "Last-Event-ID is junk",
        400,
        headers={"Last-Event-ID": "x-y"},
        param="Last-Event-ID",
    ),
    # --- OpenAI's Responses API -------------------------------------------------------------
    case("POST /v1/responses", "an unsupported field", 422, json=resp(reasoning={}), param=None),
    case("POST /v1/responses", "input is a number", 422, json=resp(input=5), param="input"),
    case(
        "POST /v1/responses",
        "a reasoning item",
        422,
        json=resp(input=[{"type": "reasoning", "summary": []}]),
        param=ANY,
    ),
    case(
        "POST /v1/responses",
        "tool_choice required",
        422,
        json=resp(tool_choice="required"),
        param="tool_choice",
    ),
    case(
        "POST /v1/responses",
        "max_output_tokens is 0",
        422,
        json=resp(max_output_tokens=0),
        param="max_output_tokens",
    ),
    case(
        "POST /v1/responses",
        "unknown previous_response_id",
        404,
        json=resp(previous_response_id=f"resp_{UNKNOWN_JOB.removeprefix('job_')}"),
        param="previous_response_id",
    ),
    case("POST /v1/responses", "body is not JSON", 400, content=b"{", headers=JSON),
    case("POST /v1/responses", "no key", 401, json=resp(), keyed=True),
    case(
        RESPONSE,
        "unknown id",
        404,
        path=f"/v1/responses/resp_{UNKNOWN_JOB.removeprefix('job_')}",
    ),
    case(
        RESPONSE,
        "starting_after is negative",
        422,
        path="/v1/responses/{job}",
        params={"stream": "true", "starting_after": "-1"},
        param="starting_after",
    ),
    case(
        RESPONSE,
        "Last-Event-ID is junk",
        400,
        path="/v1/responses/{job}",
        params={"stream": "true"},
        headers={"Last-Event-ID": "1-0"},
        param="Last-Event-ID",
    ),
    case(
        RESPONSE,
        "another key's response",
        404,
        path="/v1/responses/{other}",
        keyed=True,
        key="Bearer key-b",
    ),
    case(
        "POST /v1/responses/{response_id}/cancel",
        "another key's response",
        404,
        path="/v1/responses/{other}/cancel",
        keyed=True,
        key="Bearer key-b",
    ),
    case(
        "DELETE /v1/responses/{response_id}", "unknown id", 404, path=f"/v1/responses/{UNKNOWN_JOB}"
    ),
    case(
        "GET /v1/responses/{response_id}/input_items",
        "limit is 0",
        422,
        path="/v1/responses/{job}/input_items",
        params={"limit": "0"},
        param="limit",
    ),
    case(
        "GET /v1/responses/{response_id}/input_items",
        "after names no item",
        400,
        path="/v1/responses/{job}/input_items",
        params={"after": "msg_nope"},
        param="after",
    ),
    # --- Ollama-compatible routes -----------------------------------------------------------
    case("POST /api/chat", "model is a number", 422, json={"model": 5}, param="model"),
    case("POST /api/chat", "options is a string", 422, json=chat_job(options="x"), param="options"),
    case(
        "POST /api/chat",
        "unknown role",
        422,
        json=chat_job(messages=[{"role": "wizard", "content": "x"}]),
    ),
    case(
        "POST /api/chat",
        "unknown upstream prefix",
        422,
        json=chat_job(model="nope/m"),
        param="model",
    ),
    case(
        "POST /api/generate",
        "structured output",
        422,
        json=job(format="json"),
        param="format",
    ),
    case(
        "POST /api/generate",
        "temperature -1",
        422,
        json=job(options={"temperature": -1}, stream=False),
        param="options.temperature",
    ),
    case("POST /api/generate", "body is not JSON", 400, content=b"model=m", headers=JSON),
    # --- the AI SDK's chat transport -----------------------------------------------------------
    case(AI_CHAT, "no messages", 422, json=ui_chat(messages=[]), param="messages"),
    case(AI_CHAT, "no model", 422, json={**ui_chat(), "model": None}, param="model"),
    case(AI_CHAT, "no chat id", 422, json={**ui_chat(), "id": None}, param="id"),
    case(AI_CHAT, "chat id too long", 422, json=ui_chat(id="c" * 257), param="id"),
    case(AI_CHAT, "unknown upstream", 422, json=ui_chat(model="nowhere/m"), param="model"),
    case(
        AI_CHAT,
        "text part without text",
        422,
        json=ui_chat(messages=[{"role": "user", "parts": [{"type": "text"}]}]),
    ),
    case(
        AI_CHAT,
        "unknown role",
        422,
        json=ui_chat(messages=[{"role": "tool", "parts": [{"type": "text", "text": "x"}]}]),
    ),
    case(AI_CHAT, "unknown trigger", 422, json=ui_chat(trigger="again"), param="trigger"),
    case(AI_CHAT, "body is not JSON", 400, content=b"{", headers=JSON),
    case(
        "GET /v1/ai-sdk/chat/{chat_id}/stream",
        "chat id too long",
        422,
        path=f"/v1/ai-sdk/chat/{'c' * 257}/stream",
    ),
    case(
        "POST /v1/ai-sdk/chat/{chat_id}/cancel",
        "no generation",
        404,
        path="/v1/ai-sdk/chat/never-ran/cancel",
        param="chatId",
    ),
    case("GET /v1/ai-sdk/chat", "wrong method", 405),
    case(AI_CHAT, "no key", 401, json=ui_chat(), keyed=True),
    case(
        "GET /v1/ai-sdk/chat/{chat_id}/stream",
        "no key",
        401,
        path="/v1/ai-sdk/chat/c/stream",
        keyed=True,
    ),
    case(
        "POST /v1/ai-sdk/chat/{chat_id}/cancel",
        "unknown key",
        401,
        path="/v1/ai-sdk/chat/c/cancel",
        keyed=True,
        key="Bearer nope",
    ),
    # --- wrong methods, unknown routes ------------------------------------------------------
    case("DELETE /v1/jobs/{job_id}", "wrong method", 405),
    case("PUT /v1/jobs", "wrong method", 405),
    case("GET /v1/jobs/{job_id}/cancel", "wrong method", 405),
    case("POST /v1/jobs/{job_id}/events", "wrong method", 405),
    case("POST /v1/upstreams", "wrong method", 405),
    case("PATCH /v1/chat/completions", "wrong method", 405),
    case("POST /v1/chat/completions/{completion_id}", "wrong method", 405),
    case("DELETE /v1/models", "wrong method", 405),
    case("GET /api/chat", "wrong method", 405),
    case("PUT /api/generate", "wrong method", 405),
    case("DELETE /api/tags", "wrong method", 405),
    case("POST /healthz", "wrong method", 405),
    case("POST /readyz", "wrong method", 405),
    case("PUT /metrics", "wrong method", 405),
    case("POST /openapi.json", "wrong method", 405),
    case("GET /v2/jobs", "unknown route", 404),
    # --- API keys (a second system with TOKENRELAY_API_KEYS) --------------------------------
    jobs("no key", 401, job(), keyed=True),
    jobs("unknown key", 401, job(), keyed=True, key="Bearer key-z"),
    jobs("Basic scheme", 401, job(), keyed=True, key="Basic a2V5LWE6"),
    jobs("Bearer without a key", 401, job(), keyed=True, key="Bearer"),
    case("GET /v1/upstreams", "no key", 401, keyed=True),
    case("GET /v1/upstreams", "unknown key", 401, keyed=True, key="Bearer key-a2"),
    case("GET /v1/jobs", "no key", 401, keyed=True),
    case("GET /v1/jobs/{job_id}", "no key", 401, path="/v1/jobs/{other}", keyed=True),
    case(EVENTS, "no key", 401, path="/v1/jobs/{other}/events", keyed=True),
    case(
        "POST /v1/jobs/{job_id}/cancel", "no key", 401, path="/v1/jobs/{other}/cancel", keyed=True
    ),
    case("POST /v1/chat/completions", "no key", 401, json=chat_job(), keyed=True),
    case("GET /v1/models", "no key", 401, keyed=True),
    case("GET /api/tags", "no key", 401, keyed=True),
    case("POST /api/generate", "unknown key", 401, json=job(), keyed=True, key="Bearer nope"),
    case(
        "GET /v1/jobs/{job_id}",
        "another key's job",
        404,
        path="/v1/jobs/{other}",
        keyed=True,
        key="Bearer key-b",
    ),
    case(
        EVENTS,
        "another key's job",
        404,
        path="/v1/jobs/{other}/events",
        keyed=True,
        key="Bearer key-b",
    ),
    case(
        "POST /v1/jobs/{job_id}/cancel",
        "another key's job",
        404,
        path="/v1/jobs/{other}/cancel",
        keyed=True,
        key="Bearer key-b",
    ),
    case(
        "GET /v1/chat/completions/{completion_id}",
        "another key's job",
        404,
        path="/v1/chat/completions/{other}",
        keyed=True,
        key="Bearer key-b",
    ),
    case(
        "GET /v1/completions/{completion_id}/events",
        "another key's job",
        404,
        path="/v1/completions/{other}/events",
        keyed=True,
        key="Bearer key-b",
    ),
]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """An API with keys ``key-a`` and ``key-b`` and no worker, on a database of its own."""
    env = system_env(upstream, TOKENRELAY_API_KEYS="key-a,key-b")
    workdir: Path = tmp_path_factory.mktemp("bad_input_keyed")
    with redis_dbs.database() as url, relay_system(workdir, url, env, workers=0) as system:
        yield system


@pytest.fixture(scope="module")
def seeded(system: RelaySystem, keyed: RelaySystem) -> dict[str, str]:
    """What the cases' placeholders stand for: a finished job, another key's job, a used key."""
    idem = f"bad-input-{uuid.uuid4()}"
    with httpx.Client(base_url=system.base_url, timeout=10) as c:
        first = c.post("/v1/jobs", json=job(prompt="first"), headers={"Idempotency-Key": idem})
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        deadline = time.monotonic() + 10
        while c.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the seed job did not finish"
            time.sleep(0.02)
    with httpx.Client(base_url=keyed.base_url, timeout=10) as c:
        theirs = c.post("/v1/jobs", json=job(), headers={"Authorization": "Bearer key-a"})
        assert theirs.status_code == 202, theirs.text
    return {"{job}": job_id, "{other}": theirs.json()["id"], "{idem}": idem}


@pytest.fixture
async def client(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
        yield c


# --- the battery ------------------------------------------------------------------------------


def fill(text: str, seeded: dict[str, str]) -> str:
    for placeholder, value in seeded.items():
        text = text.replace(placeholder, value)
    return text


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 1 << 20):
        yield body[start : start + (1 << 20)]


def assert_contract_error(response: httpx.Response, status: int, param: Any = ANY) -> None:
    """The contract's error: exact status, exactly the JSON shape, no stack trace."""
    text = response.text
    assert response.status_code == status, f"{response.status_code} {text[:500]}"
    assert "Traceback" not in text and 'File "' not in text, text[:2000]
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    assert media_type == "application/json", response.headers.get("content-type")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"type", "message", "param"}, error
    assert error["type"] == TYPES[status], error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    if param is not ANY:
        assert error["param"] == param, error
    if status == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
    if status == 405:
        assert response.headers.get("allow"), "a 405 names the allowed methods"


@pytest.mark.parametrize("bad", CASES)
async def test_bad_request_gets_the_contract_error(
    bad: Bad, system: RelaySystem, keyed: RelaySystem, seeded: dict[str, str]
) -> None:
    headers = {name: fill(value, seeded) for name, value in bad.headers.items()}
    if bad.key is not None:
        headers["Authorization"] = bad.key
    kwargs: dict[str, Any] = {"headers": headers, "params": bad.params}
    if bad.json is not UNSET:
        kwargs["json"] = bad.json
    elif bad.content is not None:
        kwargs["content"] = _chunks(bad.content) if bad.chunked else bad.content
    base_url = keyed.base_url if bad.keyed else system.base_url
    method = bad.op.split(" ", 1)[0]
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        response = await c.request(method, fill(bad.path, seeded), **kwargs)
    assert_contract_error(response, bad.status, bad.param)


def test_every_documented_operation_has_bad_input_cases(system: RelaySystem) -> None:
    """Every path of the served document has cases; every operation taking input (a body, or a
    parameter besides the API key) has cases of its own."""
    document = httpx.get(f"{system.base_url}/openapi.json", timeout=10).json()
    covered = {param.values[0].op for param in CASES}
    covered_paths = {op.split(" ", 1)[1] for op in covered}
    missing = []
    for path, operations in document["paths"].items():
        if path not in covered_paths:
            missing.append(path)
        for method, operation in operations.items():
            inputs = [p for p in operation.get("parameters", []) if p["name"] != "authorization"]
            if (inputs or "requestBody" in operation) and f"{method.upper()} {path}" not in covered:
                missing.append(f"{method.upper()} {path}")
    assert missing == [], "add bad-input cases for these"


async def test_the_service_is_healthy_afterwards(
    client: httpx.AsyncClient, keyed: RelaySystem
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as k:
        assert (await k.get("/healthz")).status_code == 200
    job_id = await submit(client, model="hello")
    events = await collect(client, job_id)
    assert_well_formed(events)
    assert events[-1].data == {"finish_reason": "stop"}
    job_now = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job_now["status"] == "succeeded" and job_now["text"] == texts(events)
