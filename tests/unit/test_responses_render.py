"""Unit tests of the Responses API renderer: stored events in, numbered stream events out.

No server and no Redis: ``api.compat.responses.render`` is pure. Every event and Response is
checked against the official client's types, strictly (as ``_strict_response_validation``).
"""

from __future__ import annotations

import typing
from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from api.compat.base import COMPAT_FIELD
from api.compat.responses.render import EventRenderer, response_of
from api.compat.responses.response import ResponsesView
from api.compat.responses.schemas import conversation, input_items
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import JobError, JobRecord, ToolCall, Usage

JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"
RESP = "resp_AAAAAAAAAAAAAAAAAAAAAA"
EVENTS = TypeAdapter(ResponseStreamEvent)
ITEMS = TypeAdapter(ResponseItem)


def event(id_: str, type_: str, **data: Any) -> StoredEvent:
    return StoredEvent(id_, type_, orjson.dumps(data))


def start(id_: str, attempt: int = 1) -> StoredEvent:
    return event(id_, "start", job_id=JOB, upstream="up", model="m", attempt=attempt)


def delta(id_: str, index: int, text: str) -> StoredEvent:
    return event(id_, "delta", index=index, text=text)


def call(id_: str, index: int, arguments: str, **first: str) -> StoredEvent:
    return event(id_, "tool_call", index=index, arguments=arguments, **first)


def end(id_: str, reason: str) -> StoredEvent:
    return event(id_, "end", finish_reason=reason)


USAGE = event(
    "9-0", "usage", prompt_tokens=3, completion_tokens=4, total_tokens=7, source="upstream"
)
TOOLS = [
    start("1-0"),
    delta("2-0", 0, "Let me "),
    delta("3-0", 1, "check."),
    call("4-0", 0, '{"loc', id="call_a", name="weather"),
    call("5-0", 0, 'ation": "Berlin"}'),
    call("6-0", 1, "{}", name="time"),  # no id from the upstream: one is made
    USAGE,
    end("10-0", "tool_calls"),
]


def view(**echo: Any) -> ResponsesView:
    return ResponsesView("up/m", True, JOB, 1767225600.0, echo)


def frames(body: bytes) -> list[dict[str, Any]]:
    """Each SSE frame's data, checked: ``event:`` is its type and ``id:`` its number."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(fields["data"])
        assert fields["event"] == data["type"] and int(fields["id"]) == data["sequence_number"]
        EVENTS.validate_python(data, strict=False)
        out.append(data)
    return out


def render(events: list[StoredEvent], *, batch: int = 1000, after: int = -1, **echo: Any) -> bytes:
    renderer = EventRenderer(view(**echo), starting_after=after)
    out = renderer.opening()
    for i in range(0, len(events), batch):
        out += renderer.render(events[i : i + batch])
    return out + renderer.close()


def test_text_events_in_order_numbered_from_zero() -> None:
    events = frames(
        render(
            [start("1-0"), delta("2-0", 0, "Hi"), delta("3-0", 1, "!"), USAGE, end("10-0", "stop")]
        )
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(10))
    final = Response.model_validate(events[-1]["response"])
    assert final.id == RESP and final.status == "completed" and final.output_text == "Hi!"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.total_tokens) == (
        3,
        7,
    )
    assert (
        events[0]["response"]["status"] == "in_progress" and events[0]["response"]["usage"] is None
    )


def test_numbers_do_not_depend_on_batches_and_starting_after_drops_a_prefix() -> None:
    whole = render(TOOLS)
    assert render(TOOLS, batch=1) == render(TOOLS, batch=3) == whole
    numbered = frames(whole)
    for n in (-1, 0, 1, 5, len(numbered) - 2, len(numbered) + 3):
        assert frames(render(TOOLS, batch=2, after=n)) == [
            e for e in numbered if e["sequence_number"] > n
        ]


def test_tool_calls_become_function_call_items_after_the_message() -> None:
    events = frames(render(TOOLS))
    kinds = [e["type"] for e in events]
    # The message closes when the first call opens; the calls close at the end, in order.
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta"
    )
    args = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(a["output_index"], a["arguments"]) for a in args] == [
        (1, '{"location": "Berlin"}'),
        (2, "{}"),
    ]
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    fc = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.id) for c in fc] == [
        ("call_a", "weather", "fc_AAAAAAAAAAAAAAAAAAAAAA_1"),
        ("call_AAAAAAAAAAAAAAAAAAAAAA_1", "time", "fc_AAAAAAAAAAAAAAAAAAAAAA_2"),
    ]
    # The Response retrieved says the same (the call without an id gets the same one).
    calls = (ToolCall("call_a", "weather", '{"location": "Berlin"}'), ToolCall(None, "time", "{}"))
    rec = JobRecord(
        JOB, "succeeded", "up", "m", "t", "2026-01-01T00:00:00.000Z", finish_reason="tool_calls",
        usage=Usage(3, 4, 7), tool_calls=calls,
    )  # fmt: skip
    body = response_of(view(), rec, TOOLS)
    assert Response.model_validate(body).output == final.output


@pytest.mark.parametrize(
    ("reason", "terminal", "status"),
    [
        ("length", "response.incomplete", "incomplete"),
        ("cancelled", "response.incomplete", "cancelled"),
        ("error", "response.failed", "failed"),
    ],
)
def test_how_a_response_ends(reason: str, terminal: str, status: str) -> None:
    stored = [start("1-0"), delta("2-0", 0, "a")]
    if reason == "error":
        stored.append(
            event(
                "3-0", "error", type="upstream_error", message="boom", retryable=False, status=429
            )
        )
    events = frames(render([*stored, end("4-0", reason)]))
    last = events[-1]
    assert last["type"] == terminal and last["response"]["status"] == status
    final = Response.model_validate(last["response"])
    assert final.output[0].status == "incomplete"  # type: ignore[union-attr]
    if reason == "length":
        assert final.incomplete_details is not None
        assert final.incomplete_details.reason == "max_output_tokens"
    if reason == "error":
        assert final.error is not None and final.error.code == "rate_limit_exceeded"
        assert final.error.message == "upstream_error: boom"


def test_a_retry_start_and_a_cancel_before_start() -> None:
    retried = frames(
        render([start("1-0"), start("2-0", attempt=2), delta("3-0", 0, "x"), end("4-0", "stop")])
    )
    assert [e["type"] for e in retried].count("response.in_progress") == 1
    queued = frames(render([end("1-0", "cancelled")], background=True))
    assert [e["type"] for e in queued] == ["response.created", "response.incomplete"]
    assert queued[0]["response"]["status"] == "queued"
    assert queued[-1]["response"]["output"] == []


def test_response_of_a_running_and_a_failed_job() -> None:
    running = JobRecord(JOB, "running", "up", "m", "t", "2026-01-01T00:00:00.000Z")
    so_far = [start("1-0"), delta("2-0", 0, "so "), delta("3-0", 1, "far")]
    body = Response.model_validate(response_of(view(), running, so_far))
    assert body.status == "in_progress" and body.output_text == "so far" and body.usage is None
    assert body.output[0].status == "in_progress"  # type: ignore[union-attr]
    failed = JobRecord(
        JOB, "failed", "up", "m", "t", "2026-01-01T00:00:00.000Z",
        error=JobError("worker_lost", "the worker stopped", retryable=True),
    )  # fmt: skip
    body = Response.model_validate(response_of(view(), failed, [start("1-0"), end("2-0", "error")]))
    assert body.status == "failed" and body.output == []
    assert body.error is not None and body.error.message == "worker_lost: the worker stopped"


def test_conversation_and_input_items_of_a_record() -> None:
    asked = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},  # from the conversation continued
        {"role": "assistant", "content": "", "tool_calls": [asked]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "and?"},
    ]
    echo = {"instructions": "Be brief.", "input_from": 2}
    rec = JobRecord(
        JOB, "succeeded", "up", "m", "t", "2026-01-01T00:00:00.000Z",
        request={"messages": messages}, extra={COMPAT_FIELD: echo},
    )  # fmt: skip
    items = input_items(ResponsesView.of(rec), rec)
    for item in items:
        ITEMS.validate_python(item)
    assert [i["type"] for i in items] == ["function_call", "function_call_output", "message"]
    assert len({i["id"] for i in items}) == 3
    history = conversation(ResponsesView.of(rec), rec, "Done.")
    assert history == [*messages[1:], {"role": "assistant", "content": "Done."}]


# A call, then text, then another call: the stream's order, which a Response built from the
# record (its text, then its calls) did not keep.
INTERLEAVED = [
    start("1-0"),
    call("2-0", 0, '{"q": 1}', id="call_a", name="search"),
    delta("3-0", 0, "Found "),
    delta("4-0", 1, "it."),
    call("5-0", 1, "{}", id="call_b", name="open"),
    USAGE,
    end("10-0", "tool_calls"),
]


@pytest.mark.parametrize("stored", [TOOLS, INTERLEAVED], ids=["text-first", "interleaved"])
def test_a_retrieved_response_has_the_streams_output(stored: list[StoredEvent]) -> None:
    """Retrieve renders the stored events as the stream does: while running, each item with
    its content so far, in the stream's order; once ended, the terminal event's output."""
    events = frames(render(stored))
    final = events[-1]["response"]
    rec = JobRecord(
        JOB, "succeeded", "up", "m", "t", "2026-01-01T00:00:00.000Z", finish_reason="tool_calls",
        usage=Usage(3, 4, 7),
    )  # fmt: skip
    body = response_of(view(), rec, stored)
    assert body["output"] == final["output"]
    Response.model_validate(body)
    running = JobRecord(JOB, "running", "up", "m", "t", "2026-01-01T00:00:00.000Z")
    partial = response_of(view(), running, stored[:-2])
    Response.model_validate(partial)
    assert [item["id"] for item in partial["output"]] == [item["id"] for item in final["output"]]
    assert [item.get("arguments") for item in partial["output"]] == [
        item.get("arguments") for item in final["output"]
    ]


def test_null_fields_are_ones_the_client_allows_null() -> None:
    """A Response's fields sent as null are each nullable in the official client's model (the
    rest it would refuse, strictly validated): checked for every status a Response has."""
    nullable = {
        name
        for name, info in Response.model_fields.items()
        if type(None) in typing.get_args(info.annotation)
    }
    rec = JobRecord(JOB, "running", "up", "m", "t", "2026-01-01T00:00:00.000Z")
    for status in ("queued", "in_progress", "completed", "failed", "cancelled", "incomplete"):
        body = view().response(status)
        assert {k for k, v in body.items() if v is None} <= nullable, status
    assert not [
        k for k, v in response_of(view(), rec, []).items() if v is None and k not in nullable
    ]
