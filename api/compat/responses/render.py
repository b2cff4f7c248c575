"""OpenAI's Responses API stream of a job: numbered stream events, and the Response as the
stream shows it.

Pure: the job record and its stored events in, bytes and JSON objects out. A stream is always
rendered from the job's first event, so each event's ``sequence_number`` is a function of the
stored stream alone: the same on every replay, from every API process. ``starting_after=N``
renders from the start and drops what is numbered N or less (a replay costs the whole stream;
a job's events are few thousand at most). The SSE ``id:`` is the sequence number. A retrieved
Response is rendered from the same events by the same renderer (``response_of``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from api.compat.base import SSE_KEEPALIVE
from api.compat.responses.response import (
    STATUS,
    ResponsesView,
    call_item,
    item_status,
    message_item,
    text_part,
)
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import (
    DeltaEvent,
    EndEvent,
    ErrorEvent,
    JobError,
    JobRecord,
    StartEvent,
    ToolCallEvent,
    Usage,
    UsageEvent,
    decode,
)


def response_of(
    view: ResponsesView, record: JobRecord, events: Sequence[StoredEvent]
) -> dict[str, Any]:
    """The Response object of a job as it is now, from its stored ``events`` (all of them so
    far) through the stream's renderer: the output items in the stream's order, each with its
    text or arguments so far; the status, usage and error of ``record``."""
    renderer = EventRenderer(view, starting_after=sys.maxsize)
    renderer.render(events)
    status = STATUS[record.status]
    if status == "completed" and record.finish_reason == "length":
        status = "incomplete"
    return view.response(
        status, renderer.output(status), usage=record.usage or renderer.usage, error=record.error
    )


def sse(event: Mapping[str, Any]) -> bytes:
    return b"event: %s\nid: %d\ndata: %s\n\n" % (
        str(event["type"]).encode(),
        event["sequence_number"],
        orjson.dumps(event),
    )


@dataclass
class _Item:
    """An output item being streamed: the message (its text) or a function call."""

    output_index: int
    kind: str  # "message" | "function_call"
    call_id: str = ""
    name: str = ""
    done: bool = False
    _text: str = ""  # the text or arguments: one string, grown by the pieces not yet in it
    _pending: list[str] = field(default_factory=list)

    def append(self, piece: str) -> None:
        self._pending.append(piece)

    @property
    def text(self) -> str:
        """The whole text so far; each piece is joined into it once, however often asked."""
        if self._pending:
            self._text = "".join([self._text, *self._pending])
            self._pending.clear()
        return self._text


class EventRenderer:
    """A job's events as the Responses API's numbered stream events, as SSE.

    Render from the job's first event, always: ``opening`` first, then every batch. Events
    numbered ``starting_after`` or less are counted but not written.
    """

    def __init__(self, view: ResponsesView, *, starting_after: int = -1) -> None:
        self.view = view
        self.starting_after = starting_after
        self.seq = 0
        self.started = False
        self.items: list[_Item] = []
        self.calls: dict[int, _Item] = {}  # by the tool call's index
        self.usage: Usage | None = None
        self.error: JobError | None = None
        self.done = False

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE

    def opening(self) -> bytes:
        """``response.created``: queued for a background response, else in progress."""
        status = "queued" if self.view.echo.get("background") else "in_progress"
        return self._emit([("response.created", {"response": self.view.response(status)})])

    def render(self, events: Sequence[StoredEvent], record: JobRecord | None = None) -> bytes:
        out: list[tuple[str, dict[str, Any]]] = []
        for stored in events:
            event = decode(stored.type, stored.id, stored.data)
            if isinstance(event, StartEvent) and not self.started:  # a retry's start: no news
                self.started = True
                out.append(("response.in_progress", {"response": self._snapshot("in_progress")}))
            elif isinstance(event, DeltaEvent) and event.text:
                out += self._text(event.text)
            elif isinstance(event, ToolCallEvent):
                out += self._tool_call(event)
            elif isinstance(event, UsageEvent):
                self.usage = event.usage
            elif isinstance(event, ErrorEvent):
                self.error = event.error
            elif isinstance(event, EndEvent):
                out += self._end(event)
        return self._emit(out)

    def close(self) -> bytes:
        return b""

    # --- the events ---------------------------------------------------------------------------

    def _emit(self, events: list[tuple[str, dict[str, Any]]]) -> bytes:
        out = []
        for type_, body in events:
            event = {"type": type_, "sequence_number": self.seq, **body}
            if self.seq > self.starting_after:
                out.append(sse(event))
            self.seq += 1
        return b"".join(out)

    def _text(self, delta: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        item = self.items[-1] if self.items else None
        if item is None or item.kind != "message" or item.done:
            out += self._close_message()
            item = _Item(len(self.items), "message")
            self.items.append(item)
            where = self._where(item)
            where.pop("logprobs")
            out.append(("response.output_item.added", self._item_event(item)))
            out.append(("response.content_part.added", {**where, "part": text_part("")}))
        item.append(delta)
        out.append(("response.output_text.delta", {**self._where(item), "delta": delta}))
        return out

    def _tool_call(self, event: ToolCallEvent) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        item = self.calls.get(event.index)
        if item is None:
            out += self._close_message()
            call_id = self.view.call_id(event.call_id, event.index)
            item = _Item(len(self.items), "function_call", call_id=call_id, name=event.name or "")
            self.items.append(item)
            self.calls[event.index] = item
            out.append(("response.output_item.added", self._item_event(item)))
        elif event.name and not item.name:
            item.name = event.name
        if event.arguments:
            item.append(event.arguments)
            where = {"item_id": self.view.item_id("fc", item.output_index)}
            out.append(
                (
                    "response.function_call_arguments.delta",
                    {**where, "output_index": item.output_index, "delta": event.arguments},
                )
            )
        return out

    def _end(self, end: EndEvent) -> list[tuple[str, dict[str, Any]]]:
        self.done = True
        reason = end.finish_reason
        item_status = "completed" if reason in ("stop", "tool_calls") else "incomplete"
        out: list[tuple[str, dict[str, Any]]] = []
        for item in self.items:
            out += self._close(item, item_status)
        if reason in ("stop", "tool_calls"):
            out.append(("response.completed", {"response": self._snapshot("completed")}))
        elif reason == "length":
            out.append(("response.incomplete", {"response": self._snapshot("incomplete")}))
        elif reason == "cancelled":
            # OpenAI's stream has no event of its own for it: the end of an unfinished response,
            # whose status says why.
            out.append(("response.incomplete", {"response": self._snapshot("cancelled")}))
        else:
            error = self.error or JobError("internal", "the job failed", retryable=False)
            failed = self._snapshot("failed", error=error)
            out.append(("response.failed", {"response": failed}))
        return out

    def _close_message(self) -> list[tuple[str, dict[str, Any]]]:
        item = self.items[-1] if self.items else None
        if item is None or item.kind != "message" or item.done:
            return []
        return self._close(item, "completed")

    def _close(self, item: _Item, status: str) -> list[tuple[str, dict[str, Any]]]:
        if item.done:
            return []
        item.done = True
        out: list[tuple[str, dict[str, Any]]] = []
        text = item.text
        if item.kind == "message":
            where = self._where(item)
            out.append(("response.output_text.done", {**where, "text": text}))
            where.pop("logprobs")
            out.append(("response.content_part.done", {**where, "part": text_part(text)}))
        else:
            out.append(
                (
                    "response.function_call_arguments.done",
                    {
                        "item_id": self.view.item_id("fc", item.output_index),
                        "output_index": item.output_index,
                        "name": item.name,
                        "arguments": text,
                    },
                )
            )
        out.append(("response.output_item.done", self._item_event(item, status)))
        return out

    # --- objects ------------------------------------------------------------------------------

    def _where(self, item: _Item) -> dict[str, Any]:
        return {
            "item_id": self.view.item_id("msg", item.output_index),
            "output_index": item.output_index,
            "content_index": 0,
            "logprobs": [],
        }

    def _item(self, item: _Item, status: str, *, so_far: bool = False) -> dict[str, Any]:
        """The output item: its content once done (or, ``so_far``, what it has now)."""
        shown = item.done or so_far
        if item.kind == "message":
            text = item.text if shown else None
            return message_item(self.view, item.output_index, text, status)
        return call_item(
            self.view, item.output_index, item.call_id, item.name, item.text if shown else "",
            status,
        )  # fmt: skip

    def output(self, status: str) -> list[dict[str, Any]]:
        """The output items as a Response in ``status`` shows them: what the stream's terminal
        event has once it ended; while it runs, each item with its content so far."""
        if status not in ("queued", "in_progress"):
            return [self._item(item, item_status(status), so_far=True) for item in self.items]
        return [
            self._item(item, "completed" if item.done else "in_progress", so_far=True)
            for item in self.items
        ]

    def _item_event(self, item: _Item, status: str = "in_progress") -> dict[str, Any]:
        return {"output_index": item.output_index, "item": self._item(item, status)}

    def _snapshot(self, status: str, *, error: JobError | None = None) -> dict[str, Any]:
        final = status not in ("queued", "in_progress")
        output = self.output(status) if final else []
        return self.view.response(status, output, usage=self.usage, error=error)
