"""Unit tests of tokenrelay.wire: every event and the job record, to the wire and back."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenrelay.wire import (
    DeltaEvent,
    EndEvent,
    ErrorEvent,
    Event,
    EventId,
    JobError,
    JobRecord,
    StartEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
    UsageEvent,
    decode,
    encode,
    merge_tool_call,
    status_for,
)

EVENTS: list[Event] = [
    StartEvent("1-0", "job_x", "openai", "m", 1),
    StartEvent("1-1", "job_x", "sse", None, 2, JobError("upstream_error", "HTTP 500", True, 500)),
    DeltaEvent("2-0", 0, "héllo 😀"),
    ToolCallEvent("3-0", 0, '{"a"', "call_1", "lookup"),
    ToolCallEvent("3-1", 0, ": 1}"),
    UsageEvent("4-0", 7, 3, 10, 12.5, 40.0, "estimated"),
    ErrorEvent("5-0", "worker_lost", "the worker stopped", True),
    ErrorEvent("5-1", "upstream_error", "HTTP 429", True, 429),
    EndEvent("6-0", "tool_calls"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.type}-{e.id}")
def test_every_event_survives_the_wire(event: Event) -> None:
    assert decode(event.type, event.id, encode(event)) == event
    assert decode(event.type, event.id, orjson.loads(encode(event))) == event


def test_the_wire_shapes_are_the_contracts() -> None:
    """The ``data`` objects exactly as the contract's event table names their fields."""
    shapes = {
        "start": {"job_id", "upstream", "model", "attempt"},
        "delta": {"index", "text"},
        "tool_call": {"index", "id", "name", "arguments"},
        "usage": {
            "prompt_tokens", "completion_tokens", "total_tokens", "ttft_ms", "duration_ms",
            "source",
        },
        "error": {"type", "message", "retryable"},
        "end": {"finish_reason"},
    }  # fmt: skip
    for event in EVENTS:
        keys = set(event.data())
        if event.type == "start" and isinstance(event, StartEvent) and event.previous_error:
            keys.discard("previous_error")
        if event.type == "error":
            keys.discard("status")
        if event.type == "tool_call":
            assert keys <= shapes["tool_call"] and {"index", "arguments"} <= keys
            continue
        assert keys == shapes[event.type], event


def test_an_unknown_event_type_is_skipped_not_an_error() -> None:
    assert decode("thinking", "7-0", b'{"text": "hm"}') is None


def test_tool_call_fragments_merge_by_index_first_id_and_name_win() -> None:
    calls: dict[int, ToolCall] = {}
    for fragment in (
        ToolCallEvent("", 0, '{"q": ', "call_1", "search"),
        ToolCallEvent("", 1, "{}", "call_2", "now"),
        ToolCallEvent("", 0, '"x"}', "other", "other"),
    ):
        merge_tool_call(calls, fragment)
    assert calls == {
        0: ToolCall("call_1", "search", '{"q": "x"}'),
        1: ToolCall("call_2", "now", "{}"),
    }
    assert ToolCall.from_data(calls[0].data()) == calls[0]


def test_the_job_record_round_trips_through_its_hash() -> None:
    record = JobRecord(
        id="job_x",
        status="queued",
        upstream="openai",
        model="m",
        tenant="t",
        created_at="2026-12-04T12:00:00.000Z",
        request={"messages": [{"role": "user", "content": "hi"}], "model": "m"},
        metadata={"user": "42"},
        extra={"compat": {"format": "openai"}},
    )
    fields = record.to_hash()
    assert fields["nevents"] == "0" and fields["model"] == "m"
    assert JobRecord.from_hash(fields, extra=("compat",)) == record
    # What the worker and the Lua scripts add later is read back typed.
    fields |= {
        "status": "failed",
        "attempt": "1",
        "finish_reason": "error",
        "usage": orjson.dumps(Usage(1, 2, 3, 4.0, 5.0, "upstream").data()).decode(),
        "error": orjson.dumps(JobError("upstream_timeout", "slow", True).data()).decode(),
        "tool_calls": orjson.dumps([ToolCall("c", "f", "{}").data()]).decode(),
        "last_event_id": "9-0",
        "owner": "w:1:done",
    }
    back = JobRecord.from_hash(fields)
    assert back.usage == Usage(1, 2, 3, 4.0, 5.0, "upstream")
    assert back.error == JobError("upstream_timeout", "slow", True)
    assert back.tool_calls == (ToolCall("c", "f", "{}"),)
    body = back.to_json("text so far")
    assert body["text"] == "text so far" and body["status"] == status_for("error") == "failed"
    assert body["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_event_ids_parse_what_they_print(ms: int, seq: int) -> None:
    assert EventId.parse(str(EventId((ms, seq)))) == (ms, seq)


@pytest.mark.parametrize(
    "raw", ["", "1", "1-", "-1", "1-2-3", "\uff11-2", "1-2\n", "18446744073709551616-0"]
)
def test_malformed_event_ids_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        EventId.parse(raw)
