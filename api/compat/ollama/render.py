"""Ollama's response format for a job: NDJSON lines from its events, and the final object.

Pure: the job record and its stored events in, bytes and JSON objects out. Every object has
``created_at``: now, from the view's clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from api.compat.base import View, ms_to_ns, nanoseconds
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import (
    DeltaEvent,
    EndEvent,
    ErrorEvent,
    FinishReason,
    JobRecord,
    ToolCall,
    ToolCallEvent,
    Usage,
    UsageEvent,
    decode,
    merge_tool_call,
    now_rfc3339,
)

OLLAMA_DONE_REASON: Mapping[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "stop",
    "cancelled": "cancelled",
}
"""tokenrelay's finish reason -> Ollama's ``done_reason``. Ollama reports "stop" after tool
calls; its ``done_reason`` is an open string (it also sends "load", "unload"), so a cancelled
job says "cancelled". An ``error`` end sends an ``{"error": ...}`` line and no ``done``."""

EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class OllamaView(View):
    """How one job is shown in Ollama's format; ``clock`` gives each object's ``created_at``."""

    clock: Callable[[], str] = now_rfc3339

    def obj(self, text: str, **fields: Any) -> dict[str, Any]:
        """An object of the stream: ``message`` (chat) or ``response`` (generate), ``fields``."""
        content: dict[str, Any] = (
            {"message": {"role": "assistant", "content": text}} if self.chat else {"response": text}
        )
        return {"model": self.model, "created_at": self.clock(), **content, **fields}

    def line(self, text: str, **fields: Any) -> bytes:
        return orjson.dumps(self.obj(text, **fields)) + b"\n"


def ollama_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Merged calls (``arguments`` a JSON string) as Ollama's (``arguments`` an object;
    arguments that are not a JSON object come as ``{"_raw": "..."}``), in order."""
    out = []
    for index, call in enumerate(calls):
        raw = call.arguments or "{}"
        try:
            arguments = orjson.loads(raw)
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            arguments = {"_raw": raw}
        item: dict[str, Any] = {
            "function": {"index": index, "name": call.name or "", "arguments": arguments}
        }
        if call.id:
            item = {"id": call.id, **item}
        out.append(item)
    return out


def timings(record: JobRecord | None, usage: Usage | None) -> dict[str, Any]:
    """Ollama's counts and durations (ns) from the job's instants and its usage:
    ``load_duration`` is the wait before a worker took the job, ``prompt_eval_duration`` the
    time to the first token, ``eval_duration`` the rest of the upstream stream,
    ``total_duration`` submit to end."""
    created = None if record is None else record.created_at
    started = None if record is None else record.started_at or created
    ended = None if record is None else record.finished_at
    ttft_ms = (usage.ttft_ms if usage else None) or 0.0
    duration_ms = (usage.duration_ms if usage else None) or 0.0
    load = nanoseconds(created, started)
    return {
        "total_duration": max(nanoseconds(created, ended), load + ms_to_ns(duration_ms)),
        "load_duration": load,
        "prompt_eval_count": usage.prompt_tokens if usage else 0,
        "prompt_eval_duration": ms_to_ns(ttft_ms),
        "eval_count": usage.completion_tokens if usage else 0,
        "eval_duration": ms_to_ns(duration_ms - ttft_ms),
    }


def done_reason(record: JobRecord) -> str:
    return OLLAMA_DONE_REASON.get(record.finish_reason or "stop", "stop")


def final_body(view: OllamaView, record: JobRecord, text: str) -> dict[str, Any]:
    """The one object of ``"stream": false``: the whole text, the calls, the counts."""
    obj = view.obj(text, done=True, done_reason=done_reason(record))
    obj |= timings(record, record.usage)
    if view.chat and record.tool_calls:
        obj["message"]["tool_calls"] = ollama_tool_calls(record.tool_calls)
    return obj


def loaded_body(view: OllamaView) -> dict[str, Any]:
    """Ollama's answer to a request with nothing to generate: the model is "loaded"."""
    return view.obj("", done=True, done_reason="load")


def tags_body(catalog: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Ollama's model list of ``(upstream, "upstream/model")`` pairs."""
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": EPOCH,
            "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "",
                "family": upstream,
                "families": [upstream],
                "parameter_size": "",
                "quantization_level": "",
            },
        }
        for upstream, name in catalog
    ]
    return {"models": models}


class LineRenderer:
    """A job's events as Ollama's NDJSON stream: a line per ``delta``; at the end one line
    with the merged tool calls (chat), then the ``done`` line with the counts and durations.
    An ``error`` event is an ``{"error": "<type>: <message>"}`` line and no ``done``."""

    def __init__(self, view: OllamaView) -> None:
        self.view = view
        self.calls: dict[int, ToolCall] = {}
        self.usage: Usage | None = None

    def keepalive(self) -> bytes:
        """An empty fragment, which every Ollama client takes (a blank line would break
        them: they parse every line as JSON)."""
        return self.view.line("", done=False)

    def render(self, events: Sequence[StoredEvent], record: JobRecord | None = None) -> bytes:
        out: list[bytes] = []
        for stored in events:
            event = decode(stored.type, stored.id, stored.data)
            if isinstance(event, DeltaEvent):
                out.append(self.view.line(event.text, done=False))
            elif isinstance(event, ToolCallEvent):
                merge_tool_call(self.calls, event)
            elif isinstance(event, UsageEvent):
                self.usage = event.usage
            elif isinstance(event, ErrorEvent):
                out.append(orjson.dumps({"error": f"{event.error_type}: {event.message}"}) + b"\n")
            elif isinstance(event, EndEvent) and event.finish_reason != "error":
                out += self._end(event, record)
        return b"".join(out)

    def close(self) -> bytes:
        return b""

    def _end(self, event: EndEvent, record: JobRecord | None) -> list[bytes]:
        out = []
        if self.calls and self.view.chat:
            calls_obj = self.view.obj("", done=False)
            calls_obj["message"]["tool_calls"] = ollama_tool_calls(
                [self.calls[i] for i in sorted(self.calls)]
            )
            out.append(orjson.dumps(calls_obj) + b"\n")
        usage = self.usage or (None if record is None else record.usage)
        reason = OLLAMA_DONE_REASON.get(event.finish_reason, "stop")
        out.append(self.view.line("", done=True, done_reason=reason, **timings(record, usage)))
        return out
