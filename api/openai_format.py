"""OpenAI's response format for a job: completion objects, and stream chunks from its events.

A chunk's SSE ``id:`` is the id of the event it came from, so a stream resumed from any id it
sent goes on exactly where it stopped, in the same format.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from api.compat import follow
from api.state import Relay
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import TERMINAL_STATUSES, ZERO_ID, EventId, status_for

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "cancelled": "stop",
}
"""tokenrelay's finish reason -> OpenAI's. OpenAI has no "cancelled" (typed SDKs reject unknown
values): a cancelled job finishes "stop", and the finish chunk's ``status`` says "cancelled".
An ``error`` end has no finish chunk: an error chunk comes instead."""

ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n"
"""A comment line alone, without the blank line that would end an event: once an ``id:`` has
been seen, the ``openai`` Python client dispatches an event at every blank line, even one with
no data, and fails to parse its empty data as JSON."""


@dataclass(frozen=True, slots=True)
class View:
    """How one job is shown in OpenAI's format."""

    job_id: str
    chat: bool
    model: str  # as the client named it
    created: int
    include_usage: bool

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.job_id}"

    @property
    def url(self) -> str:
        return f"/v1/{'chat/completions' if self.chat else 'completions'}/{self.job_id}"


def completion_body(view: View, fields: dict[str, str], text: str) -> dict[str, Any]:
    """The ``chat.completion`` / ``text_completion`` object of a job, as it is now."""
    status = fields["status"]
    reason = fields.get("finish_reason")
    finish = FINISH_REASONS.get(reason) if reason else None
    calls: list[dict[str, Any]] = orjson.loads(fields.get("tool_calls") or "[]")
    usage = orjson.loads(fields["usage"]) if fields.get("usage") else None
    if usage is None and status in TERMINAL_STATUSES:
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
        "status": status,
        "job_id": view.job_id,
        "url": view.url,
        "events_url": f"{view.url}/events",
    }
    if fields.get("error"):
        body["error"] = orjson.loads(fields["error"])
    return body


class Chunks:
    """Renders a job's events as OpenAI's stream: one SSE frame per chunk, each with the
    ``id:`` of the event it came from (the frames of one event share its id)."""

    def __init__(self, r: Relay, view: View, *, role_sent: bool) -> None:
        self.r = r
        self.view = view
        self.role_sent = role_sent  # a resumed stream got the role chunk before
        self.usage: dict[str, Any] | None = None
        self.done = False

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

    async def render(self, events: Sequence[StoredEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            out += [
                b"id: %s\ndata: %s\n\n" % (event.id.encode(), orjson.dumps(obj))
                for obj in await self._objects(event)
            ]
            if event.type == "end":
                out.append(DONE)
                self.done = True
        return b"".join(out)

    async def _objects(self, event: StoredEvent) -> list[dict[str, Any]]:
        data = event.json()
        if event.type == "start" and not self.role_sent:
            self.role_sent = True
            if self.view.chat:
                return [self._chunk([self._choice({"role": "assistant", "content": ""})])]
        elif event.type == "delta":
            return [self._chunk([self._choice({"content": data["text"]})])]
        elif event.type == "tool_call" and self.view.chat:
            return [self._chunk([self._choice({"tool_calls": [_tool_call_delta(data)]})])]
        elif event.type == "usage":
            self.usage = {k: data[k] for k in ZERO_USAGE}
        elif event.type == "error":
            error = {"message": data.get("message", ""), "type": data.get("type", "internal")}
            error |= {"param": None, "code": None, "retryable": bool(data.get("retryable"))}
            if data.get("status") is not None:
                error["status"] = data["status"]
            return [{"error": error}]
        elif event.type == "end" and data["finish_reason"] != "error":
            reason = data["finish_reason"]
            finish = self._chunk(
                [self._choice({}, FINISH_REASONS.get(reason, "stop"))], status=status_for(reason)
            )
            if not self.view.include_usage:
                return [finish]
            if self.usage is None:  # resumed after the usage event: the job's status has it
                stored = await self.r.jobs.job_field(self.view.job_id, "usage")
                self.usage = orjson.loads(stored) if stored else ZERO_USAGE
            return [finish, self._chunk([], usage=self.usage)]
        return []


def _tool_call_delta(data: dict[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {"index": data["index"]}
    if data.get("id"):
        call["id"] = data["id"]
    if data.get("id") or data.get("name"):
        call["type"] = "function"  # on a call's first fragment, as OpenAI sends it
    function: dict[str, Any] = {}
    if data.get("name"):
        function["name"] = data["name"]
    function["arguments"] = data.get("arguments", "")
    call["function"] = function
    return call


async def chunk_stream(r: Relay, view: View, after: EventId) -> AsyncIterator[bytes]:
    """The job's chunks after event ``after``, replayed then live, ending ``data: [DONE]``;
    a keep-alive comment after ``keepalive_s`` of silence."""
    chunks = Chunks(r, view, role_sent=after != ZERO_ID)
    async with contextlib.aclosing(follow(r, view.job_id, after)) as batches:
        async for batch in batches:
            yield KEEPALIVE if batch is None else await chunks.render(batch)
    if not chunks.done:  # resumed after the end (or the job expired): only the terminator
        yield DONE
