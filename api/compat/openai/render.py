"""OpenAI's response format for a job: completion objects, and stream chunks from its events.

Pure: the job record and its stored events in, bytes and JSON objects out. A chunk's SSE
``id:`` is the id of the event it came from, so a stream resumed from any id it sent goes on
exactly where it stopped, in the same format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from api.compat.base import SSE_KEEPALIVE, View, compat_info, requested_model, unix_seconds
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import (
    TERMINAL_STATUSES,
    DeltaEvent,
    EndEvent,
    ErrorEvent,
    Event,
    FinishReason,
    JobError,
    JobRecord,
    StartEvent,
    ToolCallEvent,
    UsageEvent,
    decode,
    status_for,
)

OPENAI_FINISH_REASON: Mapping[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "cancelled": "stop",
}
"""tokenrelay's finish reason -> OpenAI's ``finish_reason``. OpenAI has no "cancelled" (typed
SDKs reject unknown values): a cancelled job finishes "stop", and the finish chunk's ``status``
says "cancelled". An ``error`` end has no finish chunk: an error chunk comes instead."""

ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class OpenAIView(View):
    """How one job is shown in OpenAI's format."""

    job_id: str
    created: int  # the job's creation, Unix seconds
    include_usage: bool  # end the stream with a usage chunk

    @classmethod
    def of(cls, record: JobRecord, *, chat: bool) -> OpenAIView:
        """The view the request that made the job asked for (a ``/v1/jobs`` job: no usage
        chunk, the model as ``upstream/model``)."""
        return cls(
            model=requested_model(record),
            chat=chat,
            job_id=record.id,
            created=unix_seconds(record.created_at),
            include_usage=bool(compat_info(record).get("include_usage")),
        )

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.job_id}"

    @property
    def url(self) -> str:
        return f"/v1/{'chat/completions' if self.chat else 'completions'}/{self.job_id}"


def completion_body(view: OpenAIView, record: JobRecord, text: str) -> dict[str, Any]:
    """The ``chat.completion`` / ``text_completion`` object of a job, as it is now (``text``:
    everything so far)."""
    reason = record.finish_reason
    finish = OPENAI_FINISH_REASON.get(reason) if reason else None
    calls = [call.data() for call in record.tool_calls]
    usage: dict[str, Any] | None = None if record.usage is None else record.usage.data()
    if usage is None and record.status in TERMINAL_STATUSES:
        usage = ZERO_USAGE
    choice: dict[str, Any]
    if view.chat:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body: dict[str, Any] = {
        "id": view.id,
        "object": "chat.completion" if view.chat else "text_completion",
        "created": view.created,
        "model": view.model,
        "choices": [choice],
        "usage": usage,
        "status": record.status,
        "job_id": view.job_id,
        "url": view.url,
        "events_url": f"{view.url}/events",
    }
    if record.error is not None:
        body["error"] = record.error.data()
    return body


def models_body(catalog: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """OpenAI's model list of ``(upstream, "upstream/model")`` pairs."""
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": upstream}
        for upstream, name in catalog
    ]
    return {"object": "list", "data": data}


class ChunkRenderer:
    """A job's events as OpenAI's stream: one SSE frame per chunk, each with the ``id:`` of the
    event it came from (the frames of one event share its id), then ``data: [DONE]``.

    ``resumed``: the stream goes on after an event id, so the role chunk was sent before."""

    def __init__(self, view: OpenAIView, *, resumed: bool = False) -> None:
        self.view = view
        self.role_sent = resumed
        self.usage: dict[str, Any] | None = None
        self.done = False

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE

    def render(self, events: Sequence[StoredEvent], record: JobRecord | None = None) -> bytes:
        out: list[bytes] = []
        for stored in events:
            event = decode(stored.type, stored.id, stored.data)
            if event is None:  # a type this version does not know
                continue
            out += [
                b"id: %s\ndata: %s\n\n" % (stored.id.encode(), orjson.dumps(obj))
                for obj in self._objects(event, record)
            ]
            if isinstance(event, EndEvent):
                out.append(DONE)
                self.done = True
        return b"".join(out)

    def close(self) -> bytes:
        """Nothing after ``[DONE]``; only ``[DONE]`` for a stream resumed after the end (or
        of a job that expired)."""
        return b"" if self.done else DONE

    def _objects(self, event: Event, record: JobRecord | None) -> list[dict[str, Any]]:
        if isinstance(event, StartEvent):
            if self.role_sent:  # a resumed stream, or a retry's second start
                return []
            self.role_sent = True
            if self.view.chat:
                return [self._chunk([self._choice({"role": "assistant", "content": ""})])]
        elif isinstance(event, DeltaEvent):
            return [self._chunk([self._choice({"content": event.text})])]
        elif isinstance(event, ToolCallEvent) and self.view.chat:
            return [self._chunk([self._choice({"tool_calls": [tool_call_delta(event)]})])]
        elif isinstance(event, UsageEvent):
            self.usage = _counts(event.usage.data())
        elif isinstance(event, ErrorEvent):
            return [error_chunk(event.error)]
        elif isinstance(event, EndEvent) and event.finish_reason != "error":
            reason = event.finish_reason
            finish = self._chunk(
                [self._choice({}, OPENAI_FINISH_REASON.get(reason, "stop"))],
                status=status_for(reason),
            )
            if not self.view.include_usage:
                return [finish]
            if self.usage is None:  # resumed after the usage event: the record has it
                usage = None if record is None else record.usage
                self.usage = ZERO_USAGE if usage is None else _counts(usage.data())
            return [finish, self._chunk([], usage=self.usage)]
        return []

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.view.id,
            "object": "chat.completion.chunk" if self.view.chat else "text_completion",
            "created": self.view.created,
            "model": self.view.model,
            "choices": choices,
        }
        if self.view.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return chunk

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self.view.chat:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        text = delta.get("content", "")
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _counts(usage: Mapping[str, Any]) -> dict[str, Any]:
    return {k: usage[k] for k in ZERO_USAGE}


def tool_call_delta(fragment: ToolCallEvent) -> dict[str, Any]:
    """A ``tool_call`` fragment as an item of ``delta.tool_calls``: ``id``, ``type`` and
    ``name`` on a call's first fragment, as OpenAI sends them."""
    call: dict[str, Any] = {"index": fragment.index}
    if fragment.call_id:
        call["id"] = fragment.call_id
    if fragment.call_id or fragment.name:
        call["type"] = "function"
    function: dict[str, Any] = {}
    if fragment.name:
        function["name"] = fragment.name
    function["arguments"] = fragment.arguments
    call["function"] = function
    return call


def error_chunk(error: JobError) -> dict[str, Any]:
    """An ``error`` event as OpenAI streams an error (its clients raise ``APIError``)."""
    body: dict[str, Any] = {"message": error.message, "type": error.type}
    body |= {"param": None, "code": None, "retryable": error.retryable}
    if error.status is not None:
        body["status"] = error.status
    return {"error": body}
