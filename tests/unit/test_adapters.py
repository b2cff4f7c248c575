"""Unit tests of the Ollama, OpenAI and generic SSE adapters over an httpx MockTransport."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from itertools import pairwise
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.errors import (
    UpstreamProtocol,
    UpstreamReportedError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tokenrelay.settings import UpstreamConfig
from tokenrelay.upstreams.base import (
    Chunk,
    Finish,
    GenerationRequest,
    TextDelta,
    ToolCallDelta,
    Upstream,
    Usage,
)
from tokenrelay.upstreams.ollama import OllamaUpstream
from tokenrelay.upstreams.openai import OpenAIUpstream
from tokenrelay.upstreams.sse import SSEUpstream

KINDS = ("ollama", "openai", "sse")
ADAPTERS: dict[str, Callable[[httpx.AsyncClient, UpstreamConfig], Upstream]] = {
    "ollama": OllamaUpstream,
    "openai": OpenAIUpstream,
    "sse": SSEUpstream,
}
BASE_URLS = {
    "ollama": "http://upstream.test",
    "openai": "http://upstream.test/v1",
    "sse": "http://upstream.test",
}
CHAT = GenerationRequest(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
PROMPT = GenerationRequest(model="llama3.2", prompt="Hi")
DEFAULT_REQUEST = {"ollama": CHAT, "openai": CHAT, "sse": PROMPT}

# ---------------------------------------------------------------------------
# A fake upstream: a MockTransport handler whose response body arrives in pieces
# ---------------------------------------------------------------------------


def split_at(body: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in pairwise(bounds)]


class SplitStream(httpx.AsyncByteStream):
    """The body in pieces cut at ``cuts``, then ``error`` raised if given; records ``aclose``."""

    def __init__(self, body: bytes, cuts: Sequence[int], error: Exception | None) -> None:
        self.pieces = split_at(body, cuts)
        self.error = error
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


class FakeUpstream:
    """Answers every request with ``status`` and ``body``, or raises ``raises`` instead."""

    def __init__(
        self,
        body: bytes = b"",
        *,
        status: int = 200,
        cuts: Sequence[int] = (),
        error: Exception | None = None,
        raises: Exception | None = None,
    ) -> None:
        self.body, self.status, self.cuts = body, status, cuts
        self.error, self.raises = error, raises
        self.requests: list[httpx.Request] = []
        self.streams: list[SplitStream] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.raises is not None:
            raise self.raises
        stream = SplitStream(self.body, self.cuts, self.error)
        self.streams.append(stream)
        return httpx.Response(self.status, stream=stream)

    @property
    def sent(self) -> dict[str, Any]:
        (request,) = self.requests
        body: dict[str, Any] = json.loads(request.content)
        return body


@contextlib.asynccontextmanager
async def adapter(kind: str, server: FakeUpstream, **config: Any) -> AsyncIterator[Upstream]:
    transport = httpx.MockTransport(server)
    async with httpx.AsyncClient(transport=transport) as client:
        cfg = UpstreamConfig(kind=kind, base_url=BASE_URLS[kind], **config)  # type: ignore[arg-type]
        yield ADAPTERS[kind](client, cfg)


async def collect(upstream: Upstream, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in upstream.stream(request)]


async def run(
    kind: str, body: bytes, *, cuts: Sequence[int] = (), request: GenerationRequest | None = None
) -> list[Chunk]:
    async with adapter(kind, FakeUpstream(body, cuts=cuts)) as upstream:
        return await collect(upstream, request or DEFAULT_REQUEST[kind])


async def run_until_error(
    kind: str, server: FakeUpstream, error: type[Exception]
) -> tuple[list[Chunk], pytest.ExceptionInfo[Exception]]:
    """The chunks yielded before the adapter raised ``error``, and the error."""
    seen: list[Chunk] = []
    async with adapter(kind, server) as upstream:
        with pytest.raises(error) as info:
            async for chunk in upstream.stream(DEFAULT_REQUEST[kind]):
                seen.append(chunk)
    return seen, info


def sse(*data: str) -> bytes:
    """An SSE body: one ``data:`` event per argument."""
    return "".join(f"data: {d}\n\n" for d in data).encode()


def ndjson(*lines: str) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


# ---------------------------------------------------------------------------
# Realistic bodies, each with its hand-written expected chunks
# ---------------------------------------------------------------------------

OLLAMA_CHAT = (
    '{"model":"llama3.2","created_at":"2024-05-01T12:00:00.000001Z",'
    '"message":{"role":"assistant","content":"Hello! "},"done":false}\n'
    '{"model":"llama3.2","message":{"role":"assistant","content":"héllo wörld "},"done":false}\n'
    "\n"
    '{"model":"llama3.2","message":{"role":"assistant","content":"😀 日本語"},"done":false}\n'
    '{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,'
    '"done_reason":"stop","total_duration":4200000,"load_duration":100000,'
    '"prompt_eval_count":7,"prompt_eval_duration":200000,"eval_count":3,'
    '"eval_duration":3900000}\n'
).encode()
OLLAMA_CHAT_CHUNKS: list[Chunk] = [
    TextDelta("Hello! "),
    TextDelta("héllo wörld "),
    TextDelta("😀 日本語"),
    Usage(7, 3),
    Finish("stop"),
]

OPENAI_CHAT = (
    ": connected\n"
    "\n"
    'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":'
    '[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}\n'
    "\n"
    'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hello! "}}],"usage":null}\n'
    "\n"
    'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"héllo wörld "}}]}\n'
    "\n"
    'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"😀 日本語"}}]}\n'
    "\n"
    'data: {"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
    '"type":"function","function":{"name":"get_weather","arguments":""}}]}}]}\n'
    "\n"
    'data: {"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
    '"function":{"arguments":"{\\"city\\":"}}]}}]}\n'
    "\n"
    'data: {"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
    '"function":{"arguments":"\\"Zürich\\"}"}}]}}]}\n'
    "\n"
    'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n'
    "\n"
    'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,'
    '"total_tokens":21}}\n'
    "\n"
    "data: [DONE]\n"
    "\n"
).encode()
OPENAI_CHAT_CHUNKS: list[Chunk] = [
    TextDelta("Hello! "),
    TextDelta("héllo wörld "),
    TextDelta("😀 日本語"),
    ToolCallDelta(index=0, arguments="", id="call_1", name="get_weather"),
    ToolCallDelta(index=0, arguments='{"city":'),
    ToolCallDelta(index=0, arguments='"Zürich"}'),
    Finish("tool_calls"),
    Usage(9, 12),
]

SSE_GENERATE = (
    ": ping\n"
    "\n"
    'data: {"id":"gen_1","text":"Hello! ","delta":"Hello! "}\n'
    "\n"
    'data: {"id":"gen_1","text":"Hello! héllo wörld ","delta":"héllo wörld "}\n'
    "\n"
    'data: {"id":"gen_1","text":"Hello! héllo wörld 😀 日本語","delta":"😀 日本語",'
    '"finishReason":"max_tokens"}\n'
    "\n"
    "data: [DONE]\n"
    "\n"
).encode()
SSE_GENERATE_CHUNKS: list[Chunk] = [
    TextDelta("Hello! "),
    TextDelta("héllo wörld "),
    TextDelta("😀 日本語"),
    Finish("length"),
]

SAMPLES = {
    "ollama": (OLLAMA_CHAT, OLLAMA_CHAT_CHUNKS),
    "openai": (OPENAI_CHAT, OPENAI_CHAT_CHUNKS),
    "sse": (SSE_GENERATE, SSE_GENERATE_CHUNKS),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_realistic_body_unsplit(kind: str) -> None:
    body, expected = SAMPLES[kind]
    async with asyncio.timeout(5):
        assert await run(kind, body) == expected


@pytest.mark.parametrize("kind", KINDS)
async def test_realistic_body_split_at_every_byte(kind: str) -> None:
    body, expected = SAMPLES[kind]
    assert any(byte >= 0xF0 for byte in body)  # the sample has 4-byte characters to cut into
    async with asyncio.timeout(5):
        for cut in range(1, len(body)):
            assert await run(kind, body, cuts=[cut]) == expected, f"cut at byte {cut}"


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
async def test_realistic_body_random_splits(kind: str, data: st.DataObject) -> None:
    body, expected = SAMPLES[kind]
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40), label="cuts")
    async with asyncio.timeout(5):
        assert await run(kind, body, cuts=cuts) == expected


async def test_one_byte_reads() -> None:
    async with asyncio.timeout(5):
        for kind, (body, expected) in SAMPLES.items():
            assert await run(kind, body, cuts=range(len(body))) == expected


# ---------------------------------------------------------------------------
# The request each adapter sends
# ---------------------------------------------------------------------------

FULL = GenerationRequest(
    model="llama3.2",
    messages=[{"role": "user", "content": "Grüß dich 😀"}],
    temperature=0.5,
    top_p=0.9,
    max_tokens=50,
    seed=1,
    stop=("\n\n", "END", "###", "</s>", "STOP", "Q:"),
    tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
)


async def sent_request(kind: str, request: GenerationRequest, **config: Any) -> httpx.Request:
    body, _ = SAMPLES[kind]
    server = FakeUpstream(body)
    async with adapter(kind, server, **config) as upstream:
        await collect(upstream, request)
    (sent,) = server.requests
    return sent


async def test_ollama_chat_request() -> None:
    async with asyncio.timeout(5):
        request = await sent_request("ollama", FULL)
    assert request.method == "POST"
    assert request.url == "http://upstream.test/api/chat"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "model": "llama3.2",
        "stream": True,
        "messages": [{"role": "user", "content": "Grüß dich 😀"}],
        "tools": FULL.tools,
        "options": {
            "temperature": 0.5,
            "top_p": 0.9,
            "num_predict": 50,
            "seed": 1,
            "stop": list(FULL.stop),  # Ollama takes any number of stops
        },
    }


TOOL_TURN_OPENAI = [
    {"role": "user", "content": "Weather in Berlin?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_9", "content": "12 C"},
]
TOOL_TURN_OLLAMA = [
    TOOL_TURN_OPENAI[0],
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Berlin"}}}],
    },
    {"role": "tool", "content": "12 C"},
]


@pytest.mark.parametrize("sent_as", ["openai", "ollama"])
async def test_tool_call_turns_reach_each_upstream_in_its_own_shape(sent_as: str) -> None:
    """A client's earlier tool calls, in either format, go to each upstream as it wants them."""
    messages = TOOL_TURN_OPENAI if sent_as == "openai" else TOOL_TURN_OLLAMA
    request = GenerationRequest(model="m", messages=messages)
    async with asyncio.timeout(5):
        to_ollama = json.loads((await sent_request("ollama", request)).content)["messages"]
        to_openai = json.loads((await sent_request("openai", request)).content)["messages"]
    (ollama_call,) = to_ollama[1]["tool_calls"]
    assert ollama_call["function"] == {"name": "get_weather", "arguments": {"city": "Berlin"}}
    (openai_call,) = to_openai[1]["tool_calls"]
    assert openai_call["function"]["name"] == "get_weather"
    assert json.loads(openai_call["function"]["arguments"]) == {"city": "Berlin"}
    assert openai_call["type"] == "function" and openai_call["id"]
    if sent_as == "openai":
        assert openai_call["id"] == "call_9"
    assert to_ollama[0] == to_openai[0] == messages[0]
    assert to_ollama[2] == to_openai[2] == messages[2]


async def test_ollama_generate_request_without_options() -> None:
    async with asyncio.timeout(5):
        request = await sent_request("ollama", PROMPT)
    assert request.url.path == "/api/generate"
    assert json.loads(request.content) == {"model": "llama3.2", "stream": True, "prompt": "Hi"}


async def test_openai_chat_request() -> None:
    async with asyncio.timeout(5):
        request = await sent_request("openai", FULL)
    assert request.url == "http://upstream.test/v1/chat/completions"
    assert json.loads(request.content) == {
        "model": "llama3.2",
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 50,
        "seed": 1,
        "stop": ["\n\n", "END", "###", "</s>"],  # OpenAI takes at most four
        "messages": [{"role": "user", "content": "Grüß dich 😀"}],
        "tools": FULL.tools,
    }


async def test_openai_completions_request() -> None:
    async with asyncio.timeout(5):
        request = await sent_request("openai", PROMPT)
    assert request.url.path == "/v1/completions"
    assert json.loads(request.content) == {
        "model": "llama3.2",
        "stream": True,
        "stream_options": {"include_usage": True},
        "prompt": "Hi",
    }


async def test_sse_request() -> None:
    request = GenerationRequest(model="ignored", prompt="Tell me", max_tokens=64, temperature=0.2)
    async with asyncio.timeout(5):
        sent = await sent_request("sse", request)
    assert sent.url == "http://upstream.test/v1/generate/stream"
    assert json.loads(sent.content) == {"prompt": "Tell me", "maxTokens": 64, "temperature": 0.2}


@pytest.mark.parametrize("kind", KINDS)
async def test_bearer_token_only_when_api_key_set(kind: str) -> None:
    async with asyncio.timeout(5):
        with_key = await sent_request(kind, DEFAULT_REQUEST[kind], api_key="sk-test-123")
        without = await sent_request(kind, DEFAULT_REQUEST[kind])
    assert with_key.headers["authorization"] == "Bearer sk-test-123"
    assert "authorization" not in without.headers


# ---------------------------------------------------------------------------
# OpenAI
# ---------------------------------------------------------------------------


async def test_openai_completions_text_and_length() -> None:
    body = sse(
        '{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"Once"}]}',
        '{"id":"cmpl-1","choices":[{"index":0,"text":" upon","finish_reason":"length"}]}',
        '{"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2}}',
        "[DONE]",
    )
    async with asyncio.timeout(5):
        chunks = await run("openai", body, request=PROMPT)
    assert chunks == [TextDelta("Once"), TextDelta(" upon"), Finish("length"), Usage(2, 2)]


async def test_openai_two_tool_calls_interleaved_by_index() -> None:
    body = sse(
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a",'
        '"function":{"name":"f","arguments":"{\\"x\\""}}]}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b",'
        '"function":{"name":"g","arguments":""}}]}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
        "[DONE]",
    )
    async with asyncio.timeout(5):
        chunks = await run("openai", body)
    assert chunks == [
        ToolCallDelta(index=0, arguments='{"x"', id="call_a", name="f"),
        ToolCallDelta(index=1, arguments="", id="call_b", name="g"),
        ToolCallDelta(index=0, arguments=":1}"),
        ToolCallDelta(index=1, arguments="{}"),
        Finish("tool_calls"),
    ]


async def test_openai_without_usage_chunk_yields_no_usage() -> None:
    body = sse(
        '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        "[DONE]",
    )
    async with asyncio.timeout(5):
        chunks = await run("openai", body)
    assert chunks == [TextDelta("Hi"), Finish("stop")]


async def test_openai_other_choices_are_ignored() -> None:
    body = sse(
        '{"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"A"}}]}',
        '{"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        "[DONE]",
    )
    async with asyncio.timeout(5):
        assert await run("openai", body) == [TextDelta("A"), Finish("stop")]


async def test_openai_finish_without_done_is_complete() -> None:
    body = sse('{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}')
    async with asyncio.timeout(5):
        assert await run("openai", body) == [TextDelta("Hi"), Finish("stop")]


async def test_openai_error_event_mid_stream() -> None:
    body = sse(
        '{"choices":[{"index":0,"delta":{"content":"Hel"}}]}',
        '{"error":{"message":"the model is overloaded","type":"server_error","param":null}}',
        '{"choices":[{"index":0,"delta":{"content":"never"}}]}',
    )
    async with asyncio.timeout(5):
        seen, info = await run_until_error("openai", FakeUpstream(body), UpstreamReportedError)
    assert seen == [TextDelta("Hel")]
    assert "the model is overloaded" in str(info.value)
    assert "server_error" in str(info.value)


async def test_openai_stream_ending_without_finish_or_done() -> None:
    body = sse('{"choices":[{"index":0,"delta":{"content":"Hel"}}]}')
    async with asyncio.timeout(5):
        seen, _ = await run_until_error("openai", FakeUpstream(body), UpstreamProtocol)
    assert seen == [TextDelta("Hel")]


@pytest.mark.parametrize("data", ["not json", '{"choices": [', '["a list"]'])
async def test_openai_data_that_is_not_a_json_object(data: str) -> None:
    body = sse('{"choices":[{"index":0,"delta":{"content":"ok"}}]}', data, "[DONE]")
    async with asyncio.timeout(5):
        seen, _ = await run_until_error("openai", FakeUpstream(body), UpstreamProtocol)
    assert seen == [TextDelta("ok")]


async def test_openai_crlf_comments_and_multiline_data() -> None:
    body = (
        ": keep-alive\r\n"
        "\r\n"
        'data: {"choices":[{"index":0,\r\n'
        ": a comment between the data lines\r\n"
        'data:"delta":{"content":"na\xefve "}}]}\r\n'
        "\r\n"
        "event: message\r\n"
        'data: {"choices":[{"index":0,"delta":{"content":"caf\xe9 \U0001f375"}}]}\r\n'
        "\r\n"
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r\n'
        "\r\n"
        "data: [DONE]"  # and no line end at all
    ).encode()
    expected: list[Chunk] = [TextDelta("naïve "), TextDelta("café 🍵"), Finish("stop")]
    async with asyncio.timeout(5):
        for cut in range(1, len(body)):
            assert await run("openai", body, cuts=[cut]) == expected, f"cut at byte {cut}"


# ---------------------------------------------------------------------------
# Ollama
# ---------------------------------------------------------------------------


async def test_ollama_generate() -> None:
    body = ndjson(
        '{"model":"llama3.2","response":"Bonjour","done":false}',
        '{"model":"llama3.2","response":" à tous","done":false}',
        '{"model":"llama3.2","response":"","done":true,"done_reason":"length","context":[1,2,3],'
        '"prompt_eval_count":4,"eval_count":2}',
    )
    async with asyncio.timeout(5):
        chunks = await run("ollama", body, request=PROMPT)
    assert chunks == [TextDelta("Bonjour"), TextDelta(" à tous"), Usage(4, 2), Finish("length")]


async def test_ollama_final_object_without_counts_or_reason() -> None:
    body = ndjson('{"response":"x","done":false}', '{"response":"","done":true}')
    async with asyncio.timeout(5):
        assert await run("ollama", body, request=PROMPT) == [TextDelta("x"), Finish("stop")]


async def test_ollama_tool_calls() -> None:
    body = ndjson(
        '{"message":{"role":"assistant","content":"","tool_calls":['
        '{"function":{"name":"get_weather","arguments":{"city":"Zürich","days":2}}},'
        '{"id":"call_x","function":{"name":"get_time","arguments":"{\\"tz\\":\\"UTC\\"}"}}'
        ']},"done":false}',
        '{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
        '"prompt_eval_count":11,"eval_count":20}',
    )
    async with asyncio.timeout(5):
        chunks = await run("ollama", body)
    assert chunks == [
        ToolCallDelta(
            index=0, arguments='{"city":"Zürich","days":2}', id="call_0", name="get_weather"
        ),
        ToolCallDelta(index=1, arguments='{"tz":"UTC"}', id="call_x", name="get_time"),
        Usage(11, 20),
        Finish("tool_calls"),  # although done_reason says "stop"
    ]
    assert json.loads(chunks[0].arguments) == {"city": "Zürich", "days": 2}  # type: ignore[union-attr]


async def test_ollama_error_line() -> None:
    body = ndjson(
        '{"message":{"role":"assistant","content":"Hi"},"done":false}',
        '{"error":"an error was encountered while running the model: out of memory"}',
    )
    async with asyncio.timeout(5):
        seen, info = await run_until_error("ollama", FakeUpstream(body), UpstreamReportedError)
    assert seen == [TextDelta("Hi")]
    assert "out of memory" in str(info.value)


async def test_ollama_stream_without_done_object() -> None:
    body = ndjson('{"message":{"role":"assistant","content":"Hi"},"done":false}')
    async with asyncio.timeout(5):
        seen, _ = await run_until_error("ollama", FakeUpstream(body), UpstreamProtocol)
    assert seen == [TextDelta("Hi")]


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '"text"'])
async def test_ollama_line_that_is_not_a_json_object(line: str) -> None:
    body = ndjson(line, '{"response":"","done":true}')
    async with asyncio.timeout(5):
        await run_until_error("ollama", FakeUpstream(body), UpstreamProtocol)


async def test_ollama_blank_keepalives_crlf_and_last_line_without_newline() -> None:
    body = (
        "\n"
        '{"message":{"role":"assistant","content":"a"},"done":false}\r\n'
        "   \n"
        "\r\n"
        '{"message":{"role":"assistant","content":"ß"},"done":false}\n'
        "\n"
        '{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}'
    ).encode()
    async with asyncio.timeout(5):
        for cut in range(1, len(body)):
            chunks = await run("ollama", body, cuts=[cut])
            assert chunks == [TextDelta("a"), TextDelta("ß"), Finish("stop")], f"cut at {cut}"


# ---------------------------------------------------------------------------
# Generic SSE
# ---------------------------------------------------------------------------


async def test_sse_deltas_and_finish_reason_mapping() -> None:
    body = sse(
        '{"id":"g","text":"A","delta":"A"}',
        '{"id":"g","text":"AB","delta":"B","finishReason":"end_turn"}',
        "[DONE]",
    )
    async with asyncio.timeout(5):
        assert await run("sse", body) == [TextDelta("A"), TextDelta("B"), Finish("stop")]


async def test_sse_done_without_finish_reason_is_stop() -> None:
    body = sse('{"id":"g","text":"A","delta":"A"}', "[DONE]")
    async with asyncio.timeout(5):
        assert await run("sse", body) == [TextDelta("A"), Finish("stop")]


async def test_sse_text_only_events_give_the_growth() -> None:
    body = sse(
        '{"id":"g","text":"Hé"}',
        '{"id":"g","text":"Hé"}',  # no growth: nothing to yield
        '{"id":"g","text":"Héllo 😀"}',
        '{"id":"g","delta":" 日本"}',  # a delta in between still counts as running text
        '{"id":"g","text":"Héllo 😀 日本語","finishReason":"stop"}',
        "[DONE]",
    )
    async with asyncio.timeout(5):
        chunks = await run("sse", body)
    assert chunks == [
        TextDelta("Hé"),
        TextDelta("llo 😀"),
        TextDelta(" 日本"),
        TextDelta("語"),
        Finish("stop"),
    ]


async def test_sse_running_text_that_does_not_extend() -> None:
    body = sse('{"text":"Hello"}', '{"text":"Help"}', "[DONE]")
    async with asyncio.timeout(5):
        seen, _ = await run_until_error("sse", FakeUpstream(body), UpstreamProtocol)
    assert seen == [TextDelta("Hello")]


async def test_sse_error_event() -> None:
    body = sse(
        '{"id":"g","text":"A","delta":"A"}',
        '{"error":{"type":"overloaded_error","message":"try again later"}}',
        "[DONE]",
    )
    async with asyncio.timeout(5):
        seen, info = await run_until_error("sse", FakeUpstream(body), UpstreamReportedError)
    assert seen == [TextDelta("A")]
    assert "overloaded_error" in str(info.value)
    assert "try again later" in str(info.value)


async def test_sse_stream_ending_without_finish_or_done() -> None:
    body = sse('{"id":"g","text":"A","delta":"A"}')
    async with asyncio.timeout(5):
        seen, _ = await run_until_error("sse", FakeUpstream(body), UpstreamProtocol)
    assert seen == [TextDelta("A")]


# ---------------------------------------------------------------------------
# HTTP error statuses
# ---------------------------------------------------------------------------

OPENAI_ERROR = '{"error":{"message":"%s","type":"server_error","param":null,"code":null}}'


@pytest.mark.parametrize(
    ("kind", "status", "body", "message", "retryable"),
    [
        ("openai", 500, OPENAI_ERROR % "The server had an error", "The server had an error", True),
        ("openai", 429, OPENAI_ERROR % "Rate limit reached", "Rate limit reached", True),
        ("openai", 400, OPENAI_ERROR % "max_tokens is too large", "max_tokens is too large", False),
        (
            "ollama",
            404,
            '{"error":"model \\"llama9\\" not found"}',
            'model "llama9" not found',
            False,
        ),
        ("ollama", 503, '{"error":"server busy"}', "server busy", True),
        ("sse", 502, '{"error":{"type":"bad_gateway","message":"no backend"}}', "no backend", True),
        (
            "sse",
            500,
            "<html>Internal Server Error</html>",
            "<html>Internal Server Error</html>",
            True,
        ),
    ],
)
async def test_http_error_status(
    kind: str, status: int, body: str, message: str, retryable: bool
) -> None:
    server = FakeUpstream(body.encode(), status=status, cuts=[3, 10])
    async with asyncio.timeout(5):
        seen, info = await run_until_error(kind, server, UpstreamStatus)
    assert seen == []
    error = info.value
    assert isinstance(error, UpstreamStatus)
    assert error.status == status
    assert error.retryable is retryable
    assert error.body == message
    assert message in error.message
    assert server.streams[0].closed


# ---------------------------------------------------------------------------
# Transport failures
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), UpstreamUnavailable),
        (httpx.ConnectTimeout("timed out"), UpstreamTimeout),
        (httpx.ReadTimeout("timed out"), UpstreamTimeout),
    ],
)
async def test_transport_failure_before_the_response(
    kind: str, raised: Exception, expected: type[Exception]
) -> None:
    async with asyncio.timeout(5):
        _, info = await run_until_error(kind, FakeUpstream(raises=raised), expected)
    assert info.value.retryable  # type: ignore[attr-defined]
    assert isinstance(info.value.__cause__, httpx.TransportError)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.RemoteProtocolError("peer closed connection"), UpstreamUnavailable),
        (httpx.ReadError("connection reset by peer"), UpstreamUnavailable),
        (httpx.ReadTimeout("timed out"), UpstreamTimeout),
    ],
)
async def test_transport_failure_mid_body(
    kind: str, raised: Exception, expected: type[Exception]
) -> None:
    body, chunks = SAMPLES[kind]
    cut = body.index("😀".encode()) + 2  # inside the emoji, so the third delta is incomplete
    server = FakeUpstream(body[:cut], cuts=[len(body[:cut]) // 2], error=raised)
    async with asyncio.timeout(5):
        seen, info = await run_until_error(kind, server, expected)
    assert seen == chunks[:2]
    assert isinstance(info.value.__cause__, httpx.TransportError)


# ---------------------------------------------------------------------------
# Lone surrogates and closing early
# ---------------------------------------------------------------------------

SURROGATE_BODIES = {
    "ollama": ndjson(
        r'{"message":{"role":"assistant","content":"a\ud800b\udc00"},"done":false}',
        r'{"message":{"role":"assistant","content":""},"done":true}',
    ),
    "openai": sse(
        r'{"choices":[{"index":0,"delta":{"content":"a\ud800b\udc00"},"finish_reason":"stop"}]}'
    ),
    "sse": sse(r'{"id":"g","text":"a\ud800b\udc00","delta":"a\ud800b\udc00"}', "[DONE]"),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_lone_surrogate_escapes_become_replacement_characters(kind: str) -> None:
    async with asyncio.timeout(5):
        chunks = await run(kind, SURROGATE_BODIES[kind])
    assert chunks == [TextDelta("a\ufffdb\ufffd"), Finish("stop")]


@pytest.mark.parametrize("kind", KINDS)
async def test_escaped_surrogate_pairs_decode(kind: str) -> None:
    body = SURROGATE_BODIES[kind].replace(rb"\ud800b\udc00", rb"\ud83d\ude00")
    async with asyncio.timeout(5):
        assert await run(kind, body) == [TextDelta("a😀"), Finish("stop")]


@pytest.mark.parametrize("kind", KINDS)
async def test_closing_the_iterator_early_closes_the_response(kind: str) -> None:
    body, chunks = SAMPLES[kind]
    server = FakeUpstream(body, cuts=range(0, len(body), 16))
    async with asyncio.timeout(5), adapter(kind, server) as upstream:
        agen = upstream.stream(DEFAULT_REQUEST[kind])
        assert await anext(agen) == chunks[0]
        (stream,) = server.streams
        assert not stream.closed
        await agen.aclose()  # type: ignore[attr-defined]
        assert stream.closed


# ---------------------------------------------------------------------------
# Valid JSON of the wrong shape
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        pytest.param("openai", sse('{"choices":["Hello"]}', "[DONE]"), id="openai-choice-string"),
        pytest.param(
            "openai",
            sse(
                '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
                '"usage":{"prompt_tokens":null,"completion_tokens":3}}'
            ),
            id="openai-usage-null",
        ),
        pytest.param(
            "openai",
            sse('{"choices":[{"index":0,"delta":{"tool_calls":[{"index":null}]}}]}', "[DONE]"),
            id="openai-tool-index-null",
        ),
        pytest.param(
            "ollama", ndjson('{"message":"Hello","done":false}'), id="ollama-message-string"
        ),
        pytest.param(
            "ollama",
            ndjson('{"message":{"content":"","tool_calls":["get_weather"]},"done":false}'),
            id="ollama-tool-call-string",
        ),
    ],
)
async def test_valid_json_of_the_wrong_shape_is_a_protocol_error(kind: str, body: bytes) -> None:
    async with asyncio.timeout(5):
        await run_until_error(kind, FakeUpstream(body), UpstreamProtocol)
