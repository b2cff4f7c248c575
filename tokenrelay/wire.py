"""The wire schema: every event of a job's stream and the job's record, typed, to and from the
wire. The standard library and orjson only, so the SDK can stand on this module alone.

Events (the contract's table), each a frozen dataclass whose ``id`` is the stream entry id
(``""`` until stored) and whose ``data()`` is the event's JSON object:

    StartEvent      {"job_id", "upstream", "model", "attempt", "previous_error"?}
    DeltaEvent      {"index", "text"}
    ToolCallEvent   {"index", "id"?, "name"?, "arguments"}    (``call_id`` is the wire's "id")
    UsageEvent      {"prompt_tokens", "completion_tokens", "total_tokens", "ttft_ms",
                     "duration_ms", "source"}
    ErrorEvent      {"type", "message", "retryable", "status"?}  (``error_type`` is "type")
    EndEvent        {"finish_reason"}

The job record is the job's status hash (``JobRecord``): what ``GET /v1/jobs/{id}`` shows,
what the worker and the Lua scripts update.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeAlias

import orjson

from tokenrelay.errors import quoted

EventType: TypeAlias = Literal["start", "delta", "tool_call", "usage", "error", "end"]
JobStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "cancelled", "error"]
ErrorType: TypeAlias = Literal[
    "upstream_unavailable",
    "upstream_error",
    "upstream_timeout",
    "upstream_protocol",
    "invalid_request",
    "worker_lost",
    "store_unavailable",
    "internal",
]
UsageSource: TypeAlias = Literal["upstream", "estimated"]


def now_rfc3339() -> str:
    """Now, as records and events write instants: RFC 3339, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_for(finish_reason: str) -> JobStatus:
    """The job status a stream ending with ``finish_reason`` leaves behind."""
    if finish_reason == "cancelled":
        return "cancelled"
    if finish_reason == "error":
        return "failed"
    return "succeeded"


# --- event ids --------------------------------------------------------------------------------

_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # ASCII digits only, whole string
_MAX_U64 = 2**64 - 1


class EventId(tuple[int, int]):
    """A Redis stream id as a comparable pair; ``EventId.parse`` rejects anything else."""

    __slots__ = ()

    @classmethod
    def parse(cls, raw: str) -> EventId:
        """Parse ``"<ms>-<seq>"``; raise ``ValueError`` for anything else."""
        match = _EVENT_ID.fullmatch(raw)
        if match is None:
            raise ValueError(f"malformed event id {quoted(raw)}")
        ms, seq = int(match[1]), int(match[2])
        if ms > _MAX_U64 or seq > _MAX_U64:
            raise ValueError(f"malformed event id {quoted(raw)}")
        return cls((ms, seq))

    def __str__(self) -> str:
        return f"{self[0]}-{self[1]}"


ZERO_ID = EventId((0, 0))


# --- objects inside events and records ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobError:
    """What went wrong: an ``error`` event's data, a record's ``error``, a retry's
    ``previous_error``."""

    type: ErrorType
    message: str
    retryable: bool
    status: int | None = None

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message}
        out["retryable"] = self.retryable
        if self.status is not None:
            out["status"] = self.status
        return out

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> JobError:
        return cls(d["type"], d["message"], bool(d["retryable"]), d.get("status"))


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts; the timings and ``source`` are known where the ``usage`` event is."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    ttft_ms: float | None = None
    duration_ms: float | None = None
    source: UsageSource | None = None

    def data(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "ttft_ms": self.ttft_ms,
            "duration_ms": self.duration_ms,
            "source": self.source,
        }

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> Usage:
        return cls(
            int(d["prompt_tokens"]),
            int(d["completion_tokens"]),
            int(d["total_tokens"]),
            d.get("ttft_ms"),
            d.get("duration_ms"),
            d.get("source"),
        )


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call, merged from its fragments (OpenAI's shape on the wire)."""

    id: str | None
    name: str | None
    arguments: str  # JSON text, as the model produced it
    type: str = "function"

    def data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> ToolCall:
        function = d.get("function") or {}
        return cls(d.get("id"), function.get("name"), function.get("arguments") or "")


def merge_tool_call(calls: dict[int, ToolCall], fragment: ToolCallEvent) -> None:
    """Add one fragment to the calls merged so far (by index): the one merge rule."""
    call = calls.get(fragment.index) or ToolCall(None, None, "")
    calls[fragment.index] = ToolCall(
        call.id or fragment.call_id,
        call.name or fragment.name,
        call.arguments + fragment.arguments,
    )


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartEvent:
    id: str
    job_id: str
    upstream: str
    model: str | None
    attempt: int
    previous_error: JobError | None = None  # on a retry: why the attempt before failed
    type: ClassVar[Literal["start"]] = "start"

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job_id": self.job_id, "upstream": self.upstream}
        out["model"] = self.model
        out["attempt"] = self.attempt
        if self.previous_error is not None:
            out["previous_error"] = self.previous_error.data()
        return out


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    id: str
    index: int  # counts delta events from 0
    text: str
    type: ClassVar[Literal["delta"]] = "delta"

    def data(self) -> dict[str, Any]:
        return {"index": self.index, "text": self.text}


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """A fragment of a tool call; the first of a call has ``call_id`` (the wire's ``id``)."""

    id: str
    index: int
    arguments: str
    call_id: str | None = None
    name: str | None = None
    type: ClassVar[Literal["tool_call"]] = "tool_call"

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.call_id:
            out["id"] = self.call_id
        if self.name:
            out["name"] = self.name
        out["arguments"] = self.arguments
        return out


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    ttft_ms: float | None
    duration_ms: float | None
    source: UsageSource
    type: ClassVar[Literal["usage"]] = "usage"

    @property
    def usage(self) -> Usage:
        return Usage(
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.ttft_ms,
            self.duration_ms,
            self.source,
        )

    def data(self) -> dict[str, Any]:
        return self.usage.data()


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """What went wrong; ``error_type`` is the wire's ``type`` (``upstream_error``, ...)."""

    id: str
    error_type: ErrorType
    message: str
    retryable: bool
    status: int | None = None
    type: ClassVar[Literal["error"]] = "error"

    @property
    def error(self) -> JobError:
        return JobError(self.error_type, self.message, self.retryable, self.status)

    def data(self) -> dict[str, Any]:
        return self.error.data()


@dataclass(frozen=True, slots=True)
class EndEvent:
    id: str
    finish_reason: FinishReason
    type: ClassVar[Literal["end"]] = "end"

    def data(self) -> dict[str, Any]:
        return {"finish_reason": self.finish_reason}


Event: TypeAlias = StartEvent | DeltaEvent | ToolCallEvent | UsageEvent | ErrorEvent | EndEvent
EVENT_TYPES: frozenset[str] = frozenset({"start", "delta", "tool_call", "usage", "error", "end"})


def encode(event: Event) -> bytes:
    """The event's ``data`` as JSON bytes."""
    return orjson.dumps(event.data())


def decode(type_: str, id_: str, data: bytes | str | Mapping[str, Any]) -> Event | None:
    """The event of a stored or received ``(type, id, data)``; None for a type this version
    does not know (one added to the contract later: skip it, its id still counts).
    Raises ``KeyError``, ``TypeError`` or ``ValueError`` for data not of the type's shape."""
    d = orjson.loads(data) if isinstance(data, bytes | str) else data
    if type_ == "delta":
        return DeltaEvent(id_, int(d["index"]), d["text"])
    if type_ == "start":
        previous = d.get("previous_error")
        return StartEvent(
            id_,
            d["job_id"],
            d["upstream"],
            d.get("model"),
            int(d["attempt"]),
            JobError.from_data(previous) if previous else None,
        )
    if type_ == "tool_call":
        return ToolCallEvent(id_, int(d["index"]), d["arguments"], d.get("id"), d.get("name"))
    if type_ == "usage":
        u = Usage.from_data(d)
        source: UsageSource = u.source or "upstream"
        return UsageEvent(
            id_, u.prompt_tokens, u.completion_tokens, u.total_tokens, u.ttft_ms,
            u.duration_ms, source,
        )  # fmt: skip
    if type_ == "error":
        return ErrorEvent(id_, d["type"], d["message"], bool(d["retryable"]), d.get("status"))
    if type_ == "end":
        return EndEvent(id_, d["finish_reason"])
    return None


# --- the job record ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's status hash: written at submit (``to_hash``), updated by the worker's writes
    and the Lua scripts, read back with ``from_hash``. Bookkeeping fields of the worker
    (``owner``, ``nevents``, ``void:*``) are not part of it."""

    id: str
    status: JobStatus
    upstream: str
    model: str | None
    tenant: str
    created_at: str  # RFC 3339
    request: Mapping[str, Any] = field(default_factory=dict)  # what the worker sends upstream
    metadata: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: JobError | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    last_event_id: str | None = None
    cancel_requested: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # what a drop-in route stored

    def to_hash(self) -> dict[str, str]:
        """The fields a submit writes (a new job: queued, nothing streamed)."""
        out = {name: orjson.dumps(value).decode() for name, value in self.extra.items()}
        out.update(
            {
                "id": self.id,
                "status": self.status,
                "upstream": self.upstream,
                "model": self.model or "",
                "tenant": self.tenant,
                "created_at": self.created_at,
                "request": orjson.dumps(self.request).decode(),
                "metadata": orjson.dumps(self.metadata).decode(),
                "attempt": str(self.attempt),
                "nevents": "0",
            }
        )
        return out

    @classmethod
    def from_hash(cls, f: Mapping[str, str], *, extra: tuple[str, ...] = ()) -> JobRecord:
        def json(name: str) -> Any:
            raw = f.get(name)
            return orjson.loads(raw) if raw else None

        usage, error = json("usage"), json("error")
        return cls(
            id=f["id"],
            status=f["status"],  # type: ignore[arg-type]
            upstream=f["upstream"],
            model=f.get("model") or None,
            tenant=f.get("tenant", ""),
            created_at=f["created_at"],
            request=json("request") or {},
            metadata=json("metadata") or {},
            attempt=int(f.get("attempt", "0")),
            started_at=f.get("started_at"),
            finished_at=f.get("finished_at"),
            finish_reason=f.get("finish_reason"),  # type: ignore[arg-type]
            usage=Usage.from_data(usage) if usage else None,
            error=JobError.from_data(error) if error else None,
            tool_calls=tuple(ToolCall.from_data(c) for c in json("tool_calls") or ()),
            last_event_id=f.get("last_event_id"),
            cancel_requested=bool(f.get("cancel_requested")),
            extra={name: json(name) for name in extra if f.get(name)},
        )

    def to_json(self, text: str) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` answers it; ``text`` is everything so far."""
        return {
            "id": self.id,
            "status": self.status,
            "upstream": self.upstream,
            "model": self.model,
            "text": text,
            "tool_calls": [call.data() for call in self.tool_calls],
            "finish_reason": self.finish_reason,
            "usage": None if self.usage is None else self.usage.data(),
            "error": None if self.error is None else self.error.data(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "last_event_id": self.last_event_id,
            "attempt": self.attempt,
            "metadata": dict(self.metadata),
        }
