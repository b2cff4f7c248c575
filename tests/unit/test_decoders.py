"""Unit tests for the byte-exact NDJSON line decoder and the SSE decoder."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.sse import ServerSentEvent, SSEDecoder, aiter_sse
from tokenrelay.upstreams._lines import LineDecoder, aiter_lines

SETTINGS = settings(max_examples=200, deadline=None)

# ---------------------------------------------------------------------------
# Sample payloads, each paired with a hand-written expected output.
# ---------------------------------------------------------------------------

OLLAMA_NDJSON = (
    b'{"model":"llama3.2","message":{"role":"assistant","content":"h\xc3\xa9llo"},"done":false}\n'
    b'{"model":"llama3.2","message":{"role":"assistant","content":" w\xc3\xb6rld"},"done":false}\n'
    b"\n"
    b'{"model":"llama3.2","message":{"role":"assistant","content":" \xf0\x9f\x98\x80"},'
    b'"done":false}\r\n'
    b"   \r\n"
    b'{"model":"llama3.2","message":{"role":"assistant",'
    b'"content":" \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"},"done":false}\n'
    b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}'
)
OLLAMA_LINES = [
    '{"model":"llama3.2","message":{"role":"assistant","content":"héllo"},"done":false}',
    '{"model":"llama3.2","message":{"role":"assistant","content":" wörld"},"done":false}',
    '{"model":"llama3.2","message":{"role":"assistant","content":" 😀"},"done":false}',
    '{"model":"llama3.2","message":{"role":"assistant","content":" 日本語"},"done":false}',
    '{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}',
]

# CRLF everywhere, whitespace-only keep-alives, and no newline after the last object.
NDJSON_CRLF = '{"a":"ü"}\r\n\t\r\n{"b":"🎉"}\r\n\r\n{"c":3}'.encode()
NDJSON_CRLF_LINES = ['{"a":"ü"}', '{"b":"🎉"}', '{"c":3}']

LINE_SAMPLES = [
    pytest.param(OLLAMA_NDJSON, OLLAMA_LINES, id="ollama-chat"),
    pytest.param(NDJSON_CRLF, NDJSON_CRLF_LINES, id="ndjson-crlf"),
]

OPENAI_SSE = (
    b": keep-alive\r\n"
    b"\r\n"
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant"}}]}\r\n'
    b"\r\n"
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"h\xc3\xa9llo"}}]}\r\n'
    b"\r\n"
    b": keep-alive\r\n"
    b"\r\n"
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":" \xf0\x9f\x98\x80"}}]}\r\n'
    b"\r\n"
    b"data: {\r\n"
    b'data:   "id": "chatcmpl-1",\r\n'
    b'data:   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]\r\n'
    b"data: }\r\n"
    b"\r\n"
    b"data: [DONE]"
)
OPENAI_EVENTS = [
    ServerSentEvent('{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant"}}]}'),
    ServerSentEvent('{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"héllo"}}]}'),
    ServerSentEvent('{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":" 😀"}}]}'),
    ServerSentEvent(
        "{\n"
        '  "id": "chatcmpl-1",\n'
        '  "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]\n'
        "}"
    ),
    ServerSentEvent("[DONE]"),
]

GENERIC_SSE = (
    b"retry: 5000\n"
    b"id: 1\n"
    b"event: token\n"
    b"data: hello\n"
    b"\n"
    b"id: 2\n"
    b"data:w\xc3\xb6rld\n"
    b"ignored-field: x\n"
    b"\n"
    b"event: error\n"
    b'data: {"error":{"type":"overloaded_error","message":"upstream overloaded"}}\n'
    b"\n"
)
GENERIC_EVENTS = [
    ServerSentEvent("hello", event="token", id="1", retry=5000),
    ServerSentEvent("wörld", event="message", id="2", retry=5000),
    ServerSentEvent(
        '{"error":{"type":"overloaded_error","message":"upstream overloaded"}}',
        event="error",
        id="2",
        retry=5000,
    ),
]

# A BOM and lone-CR line ends, so the BOM and every CR can be split across feeds.
BOM_CR_SSE = b"\xef\xbb\xbfevent: ping\rdata: a\rdata: \xe6\x97\xa5\r\r:c\r\rdata: z\r\r"
BOM_CR_EVENTS = [ServerSentEvent("a\n日", event="ping"), ServerSentEvent("z")]

SSE_SAMPLES = [
    pytest.param(OPENAI_SSE, OPENAI_EVENTS, id="openai-chat"),
    pytest.param(GENERIC_SSE, GENERIC_EVENTS, id="generic-error"),
    pytest.param(BOM_CR_SSE, BOM_CR_EVENTS, id="bom-lone-cr"),
]

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def decode_lines(chunks: Sequence[bytes]) -> list[str]:
    decoder = LineDecoder()
    out: list[str] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.flush()


def decode_sse(chunks: Sequence[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.flush()


def split_at(payload: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


def one_byte_at_a_time(payload: bytes) -> list[bytes]:
    return [payload[i : i + 1] for i in range(len(payload))]


async def achunks(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


# ---------------------------------------------------------------------------
# Sample payloads under every split
# ---------------------------------------------------------------------------


def test_ollama_sample_is_a_coherent_chat_stream() -> None:
    objs = [json.loads(line) for line in decode_lines([OLLAMA_NDJSON])]
    assert "".join(o["message"]["content"] for o in objs) == "héllo wörld 😀 日本語"
    assert objs[-1]["done"] is True


@pytest.mark.parametrize(("payload", "expected"), LINE_SAMPLES)
def test_lines_sample_every_split(payload: bytes, expected: list[str]) -> None:
    assert decode_lines([payload]) == expected
    for i in range(len(payload) + 1):
        assert decode_lines([payload[:i], payload[i:]]) == expected, f"split at {i}"
    assert decode_lines(one_byte_at_a_time(payload)) == expected


@pytest.mark.parametrize(("payload", "expected"), SSE_SAMPLES)
def test_sse_sample_every_split(payload: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode_sse([payload]) == expected
    for i in range(len(payload) + 1):
        assert decode_sse([payload[:i], payload[i:]]) == expected, f"split at {i}"
    assert decode_sse(one_byte_at_a_time(payload)) == expected


@pytest.mark.parametrize(("payload", "expected"), LINE_SAMPLES)
@SETTINGS
@given(data=st.data())
def test_lines_sample_random_partitions(
    payload: bytes, expected: list[str], data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=40))
    assert decode_lines(split_at(payload, cuts)) == expected


@pytest.mark.parametrize(("payload", "expected"), SSE_SAMPLES)
@SETTINGS
@given(data=st.data())
def test_sse_sample_random_partitions(
    payload: bytes, expected: list[ServerSentEvent], data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=40))
    assert decode_sse(split_at(payload, cuts)) == expected


# ---------------------------------------------------------------------------
# Random text encoded with random line ends
# ---------------------------------------------------------------------------

# Includes astral characters; excludes surrogates (not encodable) and line-end characters.
line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
ASCII_WS = " \t\n\r\x0b\x0c"


@SETTINGS
@given(
    lines=st.lists(st.tuples(line_text, st.sampled_from(["\n", "\r\n"])), max_size=15),
    final=line_text,
    data=st.data(),
)
def test_lines_random_text(lines: list[tuple[str, str]], final: str, data: st.DataObject) -> None:
    payload = ("".join(text + end for text, end in lines) + final).encode()
    # Keep-alive lines are the blank or ASCII-whitespace-only ones.
    expected = [text for text, _ in lines if text.strip(ASCII_WS)]
    if final.strip(ASCII_WS):
        expected.append(final)
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=20))
    assert decode_lines(split_at(payload, cuts)) == expected


field_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=12)
sse_event = st.tuples(
    st.lists(line_text, min_size=1, max_size=4),  # data lines
    st.one_of(st.none(), field_text),  # event
    st.one_of(st.none(), field_text),  # id
)


@SETTINGS
@given(
    events=st.lists(sse_event, max_size=8),
    bom=st.booleans(),
    terminated=st.booleans(),
    data=st.data(),
)
def test_sse_random_text(
    events: list[tuple[list[str], str | None, str | None]],
    bom: bool,
    terminated: bool,
    data: st.DataObject,
) -> None:
    lines: list[str] = []
    expected: list[ServerSentEvent] = []
    last_id: str | None = None
    for data_lines, event, id_ in events:
        if event is not None:
            lines.append(f"event: {event}")
        if id_ is not None:
            lines.append(f"id: {id_}")
            last_id = id_
        lines += [f"data: {text}" for text in data_lines]
        lines.append("")
        expected.append(ServerSentEvent("\n".join(data_lines), event or "message", last_id))
    if lines and not terminated:
        lines.pop()  # flush() must dispatch the last event without its blank line

    text = ""
    prev_end = ""
    for line in lines:
        end = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
        # CR then an empty line ended by LF reads as one CRLF, which no encoder means.
        if prev_end == "\r" and not line and end == "\n":
            end = "\r\n"
        text += line + end
        prev_end = end
    payload = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=20))
    assert decode_sse(split_at(payload, cuts)) == expected


# ---------------------------------------------------------------------------
# LineDecoder edge cases
# ---------------------------------------------------------------------------


def test_lines_cr_and_lf_in_different_feeds() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b"abc\r") == []
    assert decoder.feed(b"\ndef") == ["abc"]
    assert decoder.flush() == ["def"]


def test_lines_lone_cr_is_not_a_line_end() -> None:
    assert decode_lines([b"a\rb\n"]) == ["a\rb"]


def test_lines_multibyte_char_split_across_feeds() -> None:
    emoji = "😀".encode()
    assert decode_lines([b"x", emoji[:1], emoji[1:3], emoji[3:] + b"\n"]) == ["x😀"]


def test_lines_invalid_utf8_replaced() -> None:
    assert decode_lines([b"ok \xff\xc3(\n\xe6\x97"]) == ["ok \ufffd\ufffd(", "\ufffd"]


def test_lines_blank_and_whitespace_lines_dropped() -> None:
    assert decode_lines([b"\n\r\n  \n\t\r\na\n \t"]) == ["a"]


def test_lines_returned_as_soon_as_complete() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b'{"a":') == []
    assert decoder.feed(b'1}\n{"b"') == ['{"a":1}']
    assert decoder.feed(b"") == []
    assert decoder.flush() == ['{"b"']


def test_lines_flush_with_nothing_pending() -> None:
    assert LineDecoder().flush() == []
    decoder = LineDecoder()
    assert decoder.feed(b"a\n") == ["a"]
    assert decoder.flush() == []


def test_lines_flush_strips_trailing_cr() -> None:
    assert decode_lines([b"a\r"]) == ["a"]


def test_lines_long_line_in_many_chunks() -> None:
    assert decode_lines([b"x" * 1000] * 500 + [b"\n"]) == ["x" * 500_000]


# ---------------------------------------------------------------------------
# SSEDecoder edge cases
# ---------------------------------------------------------------------------


def test_sse_cr_and_lf_in_different_feeds_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []  # an empty feed must not forget the CR
    # Were the LF a second line end, the blank line would dispatch "a" alone.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent("a\nb")]
    assert decoder.feed(b"\n") == []
    assert decoder.flush() == []


def test_sse_lone_cr_line_ends_dispatch_immediately() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r\r") == [ServerSentEvent("x")]
    assert decoder.feed(b"data: y\rdata: z\r\r") == [ServerSentEvent("y\nz")]


def test_sse_mixed_line_ends() -> None:
    payload = b"data: a\r\ndata: b\rdata: c\n\r\n"
    assert decode_sse([payload]) == [ServerSentEvent("a\nb\nc")]


def test_sse_bom_stripped_only_at_stream_start() -> None:
    assert decode_sse([b"\xef\xbb\xbfdata: x\n\n"]) == [ServerSentEvent("x")]
    assert decode_sse([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [ServerSentEvent("x")]
    # A second BOM, or one after the first line, is part of a field name: ignored field.
    assert decode_sse([b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"]) == []
    assert decode_sse([b"\n\xef\xbb\xbfdata: x\n\n"]) == []


def test_sse_comments_only() -> None:
    assert decode_sse([b": hello\n:\n\n: keep-alive\n\n:tail"]) == []


def test_sse_empty_data_dispatch_ignored_and_event_type_reset() -> None:
    payload = b"event: foo\nid: 7\n\ndata: x\n\n"
    assert decode_sse([payload]) == [ServerSentEvent("x", "message", "7")]


def test_sse_field_without_colon() -> None:
    assert decode_sse([b"data\n\n"]) == [ServerSentEvent("")]
    assert decode_sse([b"data\ndata\n\n"]) == [ServerSentEvent("\n")]
    assert decode_sse([b"data: a\nevent\ndata\n\n"]) == [ServerSentEvent("a\n")]


def test_sse_value_spaces() -> None:
    assert decode_sse([b"data:x\n\n"]) == [ServerSentEvent("x")]
    assert decode_sse([b"data:  x \n\n"]) == [ServerSentEvent(" x ")]
    assert decode_sse([b"data: a:b\n\n"]) == [ServerSentEvent("a:b")]


def test_sse_id_semantics() -> None:
    payload = (
        b"id: 1\ndata: a\n\n"
        b"data: b\n\n"  # no id field: the last one persists
        b"id: 2\x003\ndata: c\n\n"  # contains NUL: ignored
        b"id\ndata: d\n\n"  # empty id resets it
    )
    assert decode_sse([payload]) == [
        ServerSentEvent("a", id="1"),
        ServerSentEvent("b", id="1"),
        ServerSentEvent("c", id="1"),
        ServerSentEvent("d", id=""),
    ]


def test_sse_retry_semantics() -> None:
    payload = (
        b"retry: 100\n\n"  # a data-less block still sets the reconnection time
        b"data: a\n\n"
        b"retry: 1.5\nretry: -1\nretry: 2x\nretry:\nretry: \xc2\xb2\nretry: \xd9\xa3\ndata: b\n\n"
        b"retry: " + b"9" * 5000 + b"\ndata: c\n\n"
        b"retry: 0200\ndata: d\n\n"
    )
    assert [(e.data, e.retry) for e in decode_sse([payload])] == [
        ("a", 100),
        ("b", 100),
        ("c", 100),
        ("d", 200),
    ]


def test_sse_unknown_fields_ignored() -> None:
    assert decode_sse([b"foo: bar\nDATA: x\n data: y\ndata: z\n\n"]) == [ServerSentEvent("z")]


def test_sse_invalid_utf8_replaced() -> None:
    assert decode_sse([b"data: \xff\xfe ok\n\n"]) == [ServerSentEvent("\ufffd\ufffd ok")]


def test_sse_multibyte_char_split_across_feeds() -> None:
    kanji = "日".encode()
    chunks = [b"data: ", kanji[:1], kanji[1:2], kanji[2:] + b"\n\n"]
    assert decode_sse(chunks) == [ServerSentEvent("日")]


def test_sse_flush_processes_unterminated_line_and_pending_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: [DONE]") == []
    assert decoder.flush() == [ServerSentEvent("a\n[DONE]")]
    assert decode_sse([b"event: end\ndata: x\n"]) == [ServerSentEvent("x", "end")]


def test_sse_flush_with_nothing_pending() -> None:
    assert SSEDecoder().flush() == []
    assert decode_sse([b"data: x\n\n"]) == [ServerSentEvent("x")]  # no duplicate from flush
    assert decode_sse([b"event: x\nid: 1\nretry: 5"]) == []


def test_sse_long_line_in_many_chunks() -> None:
    chunks = [b"data: ", *[b"x" * 1000] * 500, b"\r", b"\n\r", b"\n"]
    assert decode_sse(chunks) == [ServerSentEvent("x" * 500_000)]


# ---------------------------------------------------------------------------
# Async iteration
# ---------------------------------------------------------------------------


async def test_aiter_lines() -> None:
    chunks = split_at(OLLAMA_NDJSON, [1, 30, 31, 32, 100, 200, 250])
    assert [line async for line in aiter_lines(achunks(chunks))] == OLLAMA_LINES


async def test_aiter_lines_empty_stream() -> None:
    assert [line async for line in aiter_lines(achunks([]))] == []


async def test_aiter_sse() -> None:
    assert [e async for e in aiter_sse(achunks(one_byte_at_a_time(OPENAI_SSE)))] == OPENAI_EVENTS
    chunks = split_at(GENERIC_SSE, [3, 50, 51])
    assert [e async for e in aiter_sse(achunks(chunks))] == GENERIC_EVENTS


async def test_aiter_sse_empty_stream() -> None:
    assert [e async for e in aiter_sse(achunks([]))] == []
