"""The AI SDK's UI message stream (protocol v1) of a job: its events as SSE ``data:`` parts.

Pure: stored events in, bytes out. Every rendering of a job, from any API process, is the same
from the start: the message id derives from the job (or is the continued message's), the text
part ids count text segments in event order. So a reconnect that replays the job from its first
event gives a client the same message, which it replaces rather than adds.

A request may continue an assistant message (the last UI message is the assistant's, e.g. with
a tool's output filled in): the answer keeps that message's id. The client that sent it appends
the new parts to the message it has; a client that resumes starts the message afresh (the
current ``ai`` does on a replayed stream's ``start``), so a resume replays the message's earlier
parts (``prior_chunks``) before the new ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from api.compat.base import SSE_KEEPALIVE
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import (
    DeltaEvent,
    EndEvent,
    ErrorEvent,
    FinishReason,
    JobRecord,
    StartEvent,
    ToolCallEvent,
    decode,
)

HEADERS = {
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
    "X-Vercel-AI-UI-Message-Stream": "v1",
}
"""The AI SDK's ``UI_MESSAGE_STREAM_HEADERS`` (the media type aside)."""

FINISH_REASON: Mapping[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "error": "error",
}
"""tokenrelay's finish reason -> the UI stream's ``finishReason`` (values both ai 5 and the
current major accept). A cancelled job ends with an ``abort`` part instead, as the SDK's own
``streamText`` does when aborted."""

DONE = b"data: [DONE]\n\n"


def default_message_id(job_id: str) -> str:
    """The UI message id of the answer job ``job_id`` streams when it continues no message:
    the same for every rendering."""
    return f"msg_{job_id}"


@dataclass
class _Call:
    """A tool call being streamed: the UI stream's ids and its argument text so far."""

    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class UIMessageRenderer:
    """A job's events as a UI message stream, from the job's first event: ``start`` (the
    message id), ``start-step``, text and tool-input parts, ``finish-step``, then ``finish``
    (or ``error`` / ``abort``), then ``data: [DONE]``."""

    def __init__(
        self,
        job_id: str,
        message_id: str | None = None,
        prior: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.job_id = job_id
        self.message_id = message_id or default_message_id(job_id)
        self.prior = prior  # the continued message's earlier parts, for a resume
        self.started = False
        self.text_id: str | None = None  # the open text part
        self.texts = 0
        self.calls: dict[int, _Call] = {}
        self.done = False

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE

    def render(self, events: Sequence[StoredEvent], record: JobRecord | None = None) -> bytes:
        parts: list[dict[str, Any]] = []
        for stored in events:
            event = decode(stored.type, stored.id, stored.data)
            if isinstance(event, StartEvent):
                parts += self._start()
            elif isinstance(event, DeltaEvent):
                parts += self._start() + self._text(event.text)
            elif isinstance(event, ToolCallEvent):
                parts += self._start() + self._end_text() + self._tool(event)
            elif isinstance(event, ErrorEvent):
                parts += self._start() + self._end_text()
                parts.append({"type": "error", "errorText": event.message})
            elif isinstance(event, EndEvent):
                parts += self._start() + self._end(event.finish_reason)
        out = b"".join(b"data: %s\n\n" % orjson.dumps(part) for part in parts)
        if any(stored.type == "end" for stored in events):
            self.done = True
            out += DONE
        return out

    def close(self) -> bytes:
        """``[DONE]`` for a stream that never saw its job's end (the job vanished)."""
        return b"" if self.done else DONE

    def _start(self) -> list[dict[str, Any]]:
        if self.started:  # a retry's second start: nothing was streamed before it
            return []
        self.started = True
        start = {"type": "start", "messageId": self.message_id}
        return [start, *prior_chunks(self.prior), {"type": "start-step"}]

    def _text(self, delta: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if self.text_id is None:
            self.text_id = f"text_{self.texts}"
            self.texts += 1
            parts.append({"type": "text-start", "id": self.text_id})
        parts.append({"type": "text-delta", "id": self.text_id, "delta": delta})
        return parts

    def _end_text(self) -> list[dict[str, Any]]:
        if self.text_id is None:
            return []
        part = {"type": "text-end", "id": self.text_id}
        self.text_id = None
        return [part]

    def _tool(self, fragment: ToolCallEvent) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        call = self.calls.get(fragment.index)
        if call is None:
            call_id = fragment.call_id or f"call_{self.job_id}_{fragment.index}"
            call = self.calls[fragment.index] = _Call(call_id, fragment.name or "")
            parts.append({"type": "tool-input-start", "toolCallId": call_id, "toolName": call.name})
        if fragment.arguments:
            call.arguments.append(fragment.arguments)
            parts.append(
                {
                    "type": "tool-input-delta",
                    "toolCallId": call.call_id,
                    "inputTextDelta": fragment.arguments,
                }
            )
        return parts

    def _end(self, reason: FinishReason) -> list[dict[str, Any]]:
        parts = self._end_text()
        for call in self.calls.values():
            parts.append(_tool_input(call))
        parts.append({"type": "finish-step"})
        if reason == "cancelled":
            parts.append({"type": "abort", "reason": "cancelled"})
        else:
            parts.append({"type": "finish", "finishReason": FINISH_REASON.get(reason, "other")})
        return parts


def resumed(job_id: str, compat: str | None) -> UIMessageRenderer:
    """The renderer of a resume of job ``job_id``, whose record keeps ``compat`` (JSON): the
    whole message, a continued one's earlier parts first."""
    info = orjson.loads(compat) if compat else {}
    message = info.get("message") if isinstance(info, dict) else None
    if not isinstance(message, dict):
        return UIMessageRenderer(job_id)
    parts = message.get("parts")
    return UIMessageRenderer(job_id, message.get("id"), parts if isinstance(parts, list) else ())


def _tool_input(call: _Call) -> dict[str, Any]:
    """A call's complete input: ``tool-input-available``, or ``tool-input-error`` when its
    arguments are not a JSON object."""
    text = "".join(call.arguments)
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        value = None
    base = {"toolCallId": call.call_id, "toolName": call.name}
    if isinstance(value, dict):
        return {"type": "tool-input-available", **base, "input": value}
    message = f"the tool call's arguments are not a JSON object: {text[:200]!r}"
    return {"type": "tool-input-error", **base, "input": text, "errorText": message}


def prior_chunks(parts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The chunks that rebuild a continued message's earlier ``parts`` on a client that starts
    the message afresh: steps, text, reasoning, tool parts with their input and outcome, data,
    files and sources. A tool call with an outcome never gets ``tool-input-available`` (on
    which a client runs the tool): it goes from its input straight to its output, so replaying
    runs no tool again. Parts of other kinds (and malformed ones) are left out."""
    out: list[dict[str, Any]] = []
    in_step = False
    for number, part in enumerate(parts):
        kind = part.get("type")
        if not isinstance(kind, str):
            continue
        if kind == "step-start":
            if in_step:
                out.append({"type": "finish-step"})
            out.append({"type": "start-step"})
            in_step = True
        elif kind in ("text", "reasoning") and isinstance(part.get("text"), str):
            part_id = f"prior_{number}"
            out.append({"type": f"{kind}-start", "id": part_id})
            if part["text"]:
                out.append({"type": f"{kind}-delta", "id": part_id, "delta": part["text"]})
            out.append({"type": f"{kind}-end", "id": part_id})
        elif kind == "dynamic-tool" or kind.startswith("tool-"):
            out += _prior_tool(part, kind)
        elif kind.startswith("data-") and "data" in part:
            chunk = {"type": kind, "data": part["data"]}
            if isinstance(part.get("id"), str):
                chunk["id"] = part["id"]
            out.append(chunk)
        elif kind in ("file", "source-url", "source-document"):
            out.append(dict(part))
    if in_step:
        out.append({"type": "finish-step"})
    return out


def _prior_tool(part: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    call_id = part.get("toolCallId")
    name = part.get("toolName") if kind == "dynamic-tool" else kind.removeprefix("tool-")
    if not isinstance(call_id, str) or not isinstance(name, str):
        return []
    start: dict[str, Any] = {"type": "tool-input-start", "toolCallId": call_id, "toolName": name}
    if kind == "dynamic-tool":
        start["dynamic"] = True
    if part.get("providerExecuted") is True:
        start["providerExecuted"] = True
    out = [start]
    if "input" in part:
        delta = orjson.dumps(part["input"]).decode()
        out.append({"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": delta})
    state = part.get("state")
    if state == "output-available":
        out.append(
            {"type": "tool-output-available", "toolCallId": call_id, "output": part.get("output")}
        )
    elif state in ("output-error", "output-denied"):
        # ai 5 has no ``tool-output-denied``: a denied call is replayed as a failed one.
        text = part.get("errorText")
        error = text if isinstance(text, str) else "the tool call was not carried out"
        out.append({"type": "tool-output-error", "toolCallId": call_id, "errorText": error})
    elif state == "input-available":
        base = {"toolCallId": call_id, "toolName": name, "input": part.get("input")}
        out.append(
            {
                "type": "tool-input-available",
                **base,
                **{k: v for k, v in start.items() if k in ("dynamic", "providerExecuted")},
            }
        )
    return out
