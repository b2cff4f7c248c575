"""The SDK's models of the API's answers: a submitted job's handle, a job, a page of jobs.

What a job holds (its ``usage``, ``error`` and ``tool_calls``) is the wire schema's own
``Usage``, ``JobError`` and ``ToolCall``, read with their ``from_data``; so are the events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from tokenrelay.client._exceptions import ProtocolError
from tokenrelay.wire import FinishReason, JobError, JobStatus, ToolCall, Usage

__all__ = ["Job", "JobHandle", "JobList", "JobSummary", "parsed"]


def _time(raw: Any) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


@dataclass(frozen=True, slots=True)
class JobHandle:
    """What a submit answers: the job's id and where its events stream."""

    id: str
    status: JobStatus
    events_url: str
    created_at: datetime

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> JobHandle:
        return cls(d["id"], d["status"], d["events_url"], datetime.fromisoformat(d["created_at"]))


@dataclass(frozen=True, slots=True)
class Job:
    """A job's state, as ``GET /v1/jobs/{id}`` answers it; ``text`` is everything so far."""

    id: str
    status: JobStatus
    upstream: str
    model: str | None
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason | None
    usage: Usage | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_event_id: str | None
    attempt: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> Job:
        usage, error = d.get("usage"), d.get("error")
        return cls(
            id=d["id"],
            status=d["status"],
            upstream=d["upstream"],
            model=d.get("model"),
            text=d.get("text", ""),
            tool_calls=tuple(ToolCall.from_data(c) for c in d.get("tool_calls") or ()),
            finish_reason=d.get("finish_reason"),
            usage=Usage.from_data(usage) if usage else None,
            error=JobError.from_data(error) if error else None,
            created_at=datetime.fromisoformat(d["created_at"]),
            started_at=_time(d.get("started_at")),
            finished_at=_time(d.get("finished_at")),
            last_event_id=d.get("last_event_id"),
            attempt=int(d.get("attempt", 0)),
            metadata=d.get("metadata") or {},
        )


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One job of a listing: its state without its text."""

    id: str
    status: JobStatus
    upstream: str
    model: str | None
    created_at: datetime
    finished_at: datetime | None
    finish_reason: FinishReason | None
    last_event_id: str | None

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> JobSummary:
        return cls(
            id=d["id"],
            status=d["status"],
            upstream=d["upstream"],
            model=d.get("model"),
            created_at=datetime.fromisoformat(d["created_at"]),
            finished_at=_time(d.get("finished_at")),
            finish_reason=d.get("finish_reason"),
            last_event_id=d.get("last_event_id"),
        )


@dataclass(frozen=True, slots=True)
class JobList:
    """A page of recent jobs, newest first; pass ``next_before`` as ``before`` for the next."""

    data: tuple[JobSummary, ...]
    has_more: bool
    next_before: str | None = None

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> JobList:
        data = tuple(JobSummary.from_data(j) for j in d["data"])
        return cls(data, bool(d["has_more"]), d.get("next_before"))

    def __iter__(self) -> Iterator[JobSummary]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


T = TypeVar("T")


def parsed(parse: Callable[[Any], T], body: Any) -> T:
    """``parse(body)``, with a body that is not the contract's shape as ``ProtocolError``."""
    try:
        return parse(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"unexpected response body: {exc!r}") from exc
