"""The AI SDK protocol's pure parts: UI messages as chat messages, events as the UI stream."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from api.compat.aisdk.render import UIMessageRenderer
from api.compat.aisdk.schemas import ChatRequest, UIMessage, job_messages
from tokenrelay.store.events import StoredEvent

JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"


def ui(role: str, *parts: dict[str, Any]) -> UIMessage:
    return UIMessage(role=role, parts=list(parts))  # type: ignore[arg-type]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def test_an_assistant_message_of_two_steps_is_two_turns_with_the_tool_results_between() -> None:
    assistant = ui(
        "assistant",
        {"type": "step-start"},
        text("Let me look. "),
        {"type": "reasoning", "text": "left out"},
        {
            "type": "tool-search",
            "toolCallId": "c1",
            "state": "output-available",
            "input": {"q": "x"},
            "output": {"hits": 2},
        },
        {
            "type": "dynamic-tool",
            "toolName": "fetch",
            "toolCallId": "c2",
            "state": "output-error",
            "input": {"url": "u"},
            "errorText": "timed out",
        },
        {"type": "tool-pending", "toolCallId": "c3", "state": "input-streaming", "input": {}},
        {"type": "step-start"},
        text("Found two."),
    )
    got = job_messages(
        [ui("system", text("Be brief.")), ui("user", text("a"), text("b")), assistant]
    )
    assert got == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {
            "role": "assistant",
            "content": "Let me look. ",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"q":"x"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "fetch", "arguments": '{"url":"u"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"hits":2}'},
        {"role": "tool", "tool_call_id": "c2", "content": "timed out"},
        {"role": "assistant", "content": "Found two."},
    ]


def test_a_malformed_part_is_named() -> None:
    with pytest.raises(ValueError, match=r"messages\[0\]\.parts\[1\]: a text part needs 'text'"):
        job_messages([ui("user", text("ok"), {"type": "text", "text": 3})])
    with pytest.raises(ValidationError, match="no message has a text or tool part"):
        ChatRequest.model_validate(
            {"id": "c", "model": "m", "messages": [{"role": "user", "parts": [{"type": "file"}]}]}
        )


def stored(n: int, type_: str, **data: Any) -> StoredEvent:
    return StoredEvent(f"1-{n}", type_, orjson.dumps(data))


def parts(raw: bytes) -> list[Any]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame.startswith("data: "):
            data = frame.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


START = {"job_id": JOB, "upstream": "openai", "model": "m", "attempt": 1}
EVENTS = [
    stored(0, "start", **START),
    stored(1, "start", **{**START, "attempt": 2}),  # a retry before any delta
    stored(2, "delta", index=0, text="Hi"),
    stored(3, "tool_call", index=0, id="c1", name="f", arguments='{"a":'),
    stored(4, "tool_call", index=0, arguments="1}"),
    stored(5, "tool_call", index=1, id="c2", name="g", arguments="not json"),
    stored(6, "delta", index=1, text="!"),
    stored(7, "end", finish_reason="tool_calls"),
]


def test_every_rendering_of_a_job_is_the_same_whatever_its_batches() -> None:
    whole = UIMessageRenderer(JOB).render(EVENTS)
    one_by_one = UIMessageRenderer(JOB)
    assert b"".join(one_by_one.render([event]) for event in EVENTS) + one_by_one.close() == whole
    assert parts(whole) == [
        {"type": "start", "messageId": f"msg_{JOB}"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text_0"},
        {"type": "text-delta", "id": "text_0", "delta": "Hi"},
        {"type": "text-end", "id": "text_0"},
        {"type": "tool-input-start", "toolCallId": "c1", "toolName": "f"},
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": '{"a":'},
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": "1}"},
        {"type": "tool-input-start", "toolCallId": "c2", "toolName": "g"},
        {"type": "tool-input-delta", "toolCallId": "c2", "inputTextDelta": "not json"},
        {"type": "text-start", "id": "text_1"},
        {"type": "text-delta", "id": "text_1", "delta": "!"},
        {"type": "text-end", "id": "text_1"},
        {"type": "tool-input-available", "toolCallId": "c1", "toolName": "f", "input": {"a": 1}},
        {
            "type": "tool-input-error",
            "toolCallId": "c2",
            "toolName": "g",
            "input": "not json",
            "errorText": "the tool call's arguments are not a JSON object: 'not json'",
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
        "[DONE]",
    ]


def test_an_error_and_a_cancel() -> None:
    failed = UIMessageRenderer(JOB).render(
        [
            stored(0, "start", **START),
            stored(1, "error", type="upstream_error", message="boom", retryable=False),
            stored(2, "end", finish_reason="error"),
        ]
    )
    assert parts(failed)[2:] == [
        {"type": "error", "errorText": "boom"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "error"},
        "[DONE]",
    ]
    cancelled = UIMessageRenderer(JOB).render([stored(0, "end", finish_reason="cancelled")])
    assert parts(cancelled) == [
        {"type": "start", "messageId": f"msg_{JOB}"},
        {"type": "start-step"},
        {"type": "finish-step"},
        {"type": "abort", "reason": "cancelled"},
        "[DONE]",
    ]
    gone = UIMessageRenderer(JOB)
    assert gone.close() == b"data: [DONE]\n\n"


def test_a_continued_messages_earlier_parts_replayed_run_no_tool_again() -> None:
    """A resume of a continued message: its earlier parts as chunks after ``start`` (under its
    id), before the new step. A tool call with an outcome goes from its input to its outcome
    with no ``tool-input-available`` (on which a client would run the tool)."""
    prior = [
        {"type": "step-start"},
        {"type": "reasoning", "text": "hmm"},
        text("Looking."),
        {
            "type": "dynamic-tool",
            "toolName": "fetch",
            "toolCallId": "c1",
            "state": "output-error",
            "input": {"u": 1},
            "errorText": "timed out",
        },
        {"type": "tool-deny", "toolCallId": "c2", "state": "output-denied", "input": {}},
        {"type": "data-weather", "id": "d1", "data": {"t": 1}},
        {"type": "source-url", "sourceId": "s1", "url": "https://example.com"},
        {"type": "step-start"},
        {"type": "tool-ask", "toolCallId": "c3", "state": "input-available", "input": {"q": 2}},
        {"type": "unknown-kind"},
        {"type": "text"},  # malformed: left out
    ]
    renderer = UIMessageRenderer(JOB, "asst-1", prior)
    got = [
        json.loads(line.removeprefix("data: "))
        for line in renderer.render(EVENTS[:2]).decode().split("\n\n")
        if line.startswith("data: {")
    ]
    replayed = [
        {"type": "start", "messageId": "asst-1"},
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "prior_1"},
        {"type": "reasoning-delta", "id": "prior_1", "delta": "hmm"},
        {"type": "reasoning-end", "id": "prior_1"},
        {"type": "text-start", "id": "prior_2"},
        {"type": "text-delta", "id": "prior_2", "delta": "Looking."},
        {"type": "text-end", "id": "prior_2"},
        {"type": "tool-input-start", "toolCallId": "c1", "toolName": "fetch", "dynamic": True},
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": '{"u":1}'},
        {"type": "tool-output-error", "toolCallId": "c1", "errorText": "timed out"},
        {"type": "tool-input-start", "toolCallId": "c2", "toolName": "deny"},
        {"type": "tool-input-delta", "toolCallId": "c2", "inputTextDelta": "{}"},
        {
            "type": "tool-output-error",
            "toolCallId": "c2",
            "errorText": "the tool call was not carried out",
        },
        {"type": "data-weather", "data": {"t": 1}, "id": "d1"},
        {"type": "source-url", "sourceId": "s1", "url": "https://example.com"},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "tool-input-start", "toolCallId": "c3", "toolName": "ask"},
        {"type": "tool-input-delta", "toolCallId": "c3", "inputTextDelta": '{"q":2}'},
        {"type": "tool-input-available", "toolCallId": "c3", "toolName": "ask", "input": {"q": 2}},
        {"type": "finish-step"},
        {"type": "start-step"},
    ]
    assert got[: len(replayed)] == replayed
    # The POST that continues it sends the new parts only, under the message's id.
    fresh = UIMessageRenderer(JOB, "asst-1").render(EVENTS[:1]).decode()
    assert fresh.startswith(
        'data: {"type":"start","messageId":"asst-1"}\n\ndata: {"type":"start-step"}'
    )
