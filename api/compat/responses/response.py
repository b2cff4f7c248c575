"""OpenAI's Responses API objects of a job: the Response, its output items, usage and error.

Pure. Ids come from the job id: ``resp_X`` for ``job_X`` (``reading.response_id``),
``msg_X_<n>`` and ``fc_X_<n>`` for output item ``n``, and ``call_X_<i>`` for a tool call the
upstream sent without an id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from api.compat.base import View, compat_info, parse_time, requested_model
from api.reading import JOB_PREFIX, response_id
from tokenrelay.wire import JobError, JobRecord, Usage

STATUS = {
    "queued": "queued",
    "running": "in_progress",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
"""A job's status -> the Response's (``completed`` becomes ``incomplete`` at a token limit)."""


@dataclass(frozen=True, slots=True)
class ResponsesView(View):
    """How one job is shown as a Response: what its request asked, echoed."""

    job_id: str
    created_at: float  # Unix seconds
    echo: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, record: JobRecord) -> ResponsesView:
        """The view of any job (one not made here: no instructions, no tools)."""
        return cls(
            model=requested_model(record),
            chat=True,
            job_id=record.id,
            created_at=parse_time(record.created_at).timestamp(),
            echo=compat_info(record),
            metadata=record.metadata,
        )

    @property
    def id(self) -> str:
        return response_id(self.job_id)

    @property
    def suffix(self) -> str:
        return self.job_id.removeprefix(JOB_PREFIX)

    def item_id(self, kind: str, output_index: int) -> str:
        return f"{kind}_{self.suffix}_{output_index}"

    def call_id(self, call_id: str | None, tool_index: int) -> str:
        return call_id or f"call_{self.suffix}_{tool_index}"

    def response(
        self,
        status: str,
        output: Sequence[Mapping[str, Any]] = (),
        *,
        usage: Usage | None = None,
        error: JobError | None = None,
    ) -> dict[str, Any]:
        """The Response object in ``status`` (a Response status), with ``output`` items; a
        finished one has ``usage`` (zeros when unknown)."""
        echo = self.echo
        finished = status not in ("queued", "in_progress")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": bool(echo.get("background")),
            "error": None if error is None else error_body(error),
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "metadata": {str(k): str(v) for k, v in self.metadata.items()},
            "model": self.model,
            "output": list(output),
            "parallel_tool_calls": True,
            "previous_response_id": echo.get("previous_response_id"),
            "store": echo.get("store", True),
            "temperature": echo.get("temperature"),
            "text": {"format": {"type": "text"}},
            "tool_choice": echo.get("tool_choice", "auto"),
            "tools": list(echo.get("tools") or ()),
            "top_p": echo.get("top_p"),
            "truncation": "disabled",
            "usage": usage_body(usage) if finished else None,
            "job_id": self.job_id,
            "events_url": f"/v1/jobs/{self.job_id}/events",
        }


def usage_body(usage: Usage | None) -> dict[str, Any]:
    """OpenAI's Response usage (every field its client requires; no cache, no reasoning)."""
    inp, out = (0, 0) if usage is None else (usage.prompt_tokens, usage.completion_tokens)
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inp + out if usage is None else usage.total_tokens,
    }


def error_body(error: JobError) -> dict[str, Any]:
    """A job's error as a Response's: OpenAI's clients take only OpenAI's codes, so the code is
    ``rate_limit_exceeded`` or ``server_error`` and tokenrelay's error type leads the message."""
    code = "rate_limit_exceeded" if error.status == 429 else "server_error"
    return {"code": code, "message": f"{error.type}: {error.message}"}


def message_item(
    view: ResponsesView, output_index: int, text: str | None, status: str
) -> dict[str, Any]:
    """An assistant message output item (``text`` None: no content part yet)."""
    content = [] if text is None else [text_part(text)]
    return {
        "id": view.item_id("msg", output_index),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(
    view: ResponsesView,
    output_index: int,
    call_id: str,
    name: str,
    arguments: str,
    status: str,
) -> dict[str, Any]:
    return {
        "id": view.item_id("fc", output_index),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def item_status(response_status: str) -> str:
    return "completed" if response_status == "completed" else "incomplete"
