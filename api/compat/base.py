"""What every drop-in protocol's requests and renderings share: pure, no Redis, no routes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import JobRecord

COMPAT_FIELD = "compat"
"""Job record field with what a drop-in request asked for (the model as named, options of the
response format), so a later follower renders the job the same way. The worker ignores it."""

SSE_KEEPALIVE = b": keep-alive\n"
"""The keep-alive of every drop-in SSE stream: a comment line alone, without the blank line
that would end an event: once an ``id:`` has been seen, the ``openai`` Python client dispatches
an event at every blank line, even one with no data, and fails to parse its empty data as
JSON. Other SSE parsers (the AI SDK's) pass a comment line over either way."""

ModelName = Annotated[
    str,
    Field(min_length=1, max_length=512, description="`upstream/model`, or a default upstream's"),
]


class DropInRequest(BaseModel):
    """A protocol's request: the model as the client named it, and the job it asks for.
    Fields a protocol does not map are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    job_params: ClassVar[Mapping[str, str]] = {}
    """A ``JobRequest`` location (``options.max_tokens``) -> the client's name for it, so that
    a 422 names the field the client sent."""

    model: ModelName

    def job_input(self) -> dict[str, Any]:
        """``JobRequest`` fields of the input: ``messages`` and ``tools``, or ``prompt``."""
        raise NotImplementedError

    def job_fields(self) -> dict[str, Any]:
        """``JobRequest`` fields of the protocol's options (``options``, ``metadata``)."""
        raise NotImplementedError

    def compat(self) -> dict[str, Any]:
        """What the job record keeps (``COMPAT_FIELD``) to render the job the same way later."""
        return {"model": self.model}


@dataclass(frozen=True, slots=True)
class View:
    """How one job is shown in a drop-in protocol: through its chat or its plain-completion
    endpoint, under the model name the client used."""

    model: str
    chat: bool


class Renderer(Protocol):
    """A job's stream in a protocol's form, one batch of stored events at a time, in order.

    ``render`` gets ``record`` (the job's record, read once the batch holds the ``end`` event;
    None before it, or when the job is gone) and may return ``b""``; ``close`` is what the
    stream ends with after its last batch."""

    def keepalive(self) -> bytes: ...

    def render(self, events: Sequence[StoredEvent], record: JobRecord | None) -> bytes: ...

    def close(self) -> bytes: ...


def compat_info(record: JobRecord) -> Mapping[str, Any]:
    """What the request that made the job asked for (empty for a job made by ``/v1/jobs``)."""
    info = record.extra.get(COMPAT_FIELD)
    return info if isinstance(info, Mapping) else {}


def requested_model(record: JobRecord) -> str:
    """The model as the client named it, or ``upstream/model`` for a job made otherwise."""
    named = compat_info(record).get("model")
    if isinstance(named, str):
        return named
    return f"{record.upstream}/{record.model or ''}"


def parse_time(rfc3339: str) -> datetime:
    """An instant of the job record (``wire.now_rfc3339``'s form)."""
    return datetime.fromisoformat(rfc3339)


def unix_seconds(rfc3339: str | None) -> int:
    """An instant of the job record in whole Unix seconds (0 for none), as OpenAI's
    ``created``."""
    return int(parse_time(rfc3339).timestamp()) if rfc3339 else 0


def nanoseconds(start: str | None, end: str | None) -> int:
    """The time from ``start`` to ``end`` in nanoseconds (0 if either is missing)."""
    if not start or not end:
        return 0
    return ms_to_ns((parse_time(end) - parse_time(start)).total_seconds() * 1000)


def ms_to_ns(ms: float) -> int:
    return max(0, round(ms * 1_000_000))
