"""The stream event schema, event ids and the Redis key names: defined here and nowhere else."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

import orjson

from tokenrelay.errors import quoted

EventType: TypeAlias = Literal["start", "delta", "tool_call", "usage", "error", "end"]
EVENT_TYPES: frozenset[str] = frozenset({"start", "delta", "tool_call", "usage", "error", "end"})

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


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a job's event stream, as published and as read back.

    ``id`` is the Redis stream entry id (``"<ms>-<seq>"``); it is ``""`` until published.
    """

    type: EventType
    data: dict[str, Any]
    id: str = ""

    def encoded_data(self) -> bytes:
        return orjson.dumps(self.data)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker gets when it takes a job for an attempt."""

    attempt: int
    nevents: int
    request: dict[str, Any]
    upstream: str
    model: str | None
    cancel_requested: bool


def parse_claim(reply: Sequence[Any]) -> Claim | str:
    """A claim.lua reply: the ``Claim``, or the status that bars the job."""
    if reply[0] == 0:
        return reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    attempt, nevents, request, upstream, model, cancel = reply
    return Claim(
        attempt=int(attempt),
        nevents=int(nevents),
        request=orjson.loads(request),
        upstream=upstream.decode(),
        model=model.decode() or None,
        cancel_requested=bool(cancel),
    )


def now_rfc3339() -> str:
    """Now, as the job records and events write instants: RFC 3339, UTC, milliseconds."""
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


# --- Redis keys -------------------------------------------------------------------------------
# All keys of one job share one hash tag, so a job lives in one Redis Cluster slot. The tag is
# the job's shard, not its id: a cluster refuses a multi-key command across slots even on one
# node, so an API process follows every job of a shard with one XREAD, and needs at most
# SHARDS blocking readers however many jobs it follows.

SHARDS = 128
KEY_PREFIX = "tr"


def shard_of(job_id: str) -> int:
    return zlib.crc32(job_id.encode()) % SHARDS


def shard_tag(shard: int) -> str:
    """A key in the shard's slot (to ask a cluster which node holds the shard)."""
    return f"{KEY_PREFIX}:{{s{shard}}}"


def _job_prefix(job_id: str) -> str:
    return f"{shard_tag(shard_of(job_id))}:{job_id}"


def events_key(job_id: str) -> str:
    """The job's event stream."""
    return f"{_job_prefix(job_id)}:events"


def job_key(job_id: str) -> str:
    """The job's status hash."""
    return f"{_job_prefix(job_id)}:job"


def text_key(job_id: str) -> str:
    """The job's text so far (a string grown with APPEND)."""
    return f"{_job_prefix(job_id)}:text"


def job_of(key: str) -> str:
    """The job id in one of its keys (``tr:{s<n>}:<job_id>:<kind>``)."""
    return key.split(":")[2]


def job_keys(job_id: str) -> tuple[str, str, str]:
    """The three keys of a job, in the order the Lua scripts take them."""
    return events_key(job_id), job_key(job_id), text_key(job_id)


def recent_jobs_key(tenant: str) -> str:
    """A sorted set of the tenant's job ids, scored by creation time (ms): ``GET /v1/jobs``."""
    return f"{KEY_PREFIX}:recent:{tenant}"


RECENT_JOBS_KEPT = 1000


def idempotency_key(scope: str, key_digest: str) -> str:
    return f"{KEY_PREFIX}:idem:{scope}:{key_digest}"


WAKE_CHANNEL = f"{KEY_PREFIX}:wake"
"""Pub/sub channel the API publishes to after enqueueing, so idle workers start jobs at once."""

CANCEL_CHANNEL = f"{KEY_PREFIX}:cancel"
"""Pub/sub channel carrying the ids of jobs to cancel; every worker listens."""

JOB_FUNCTION = "generate"
"""The arq function name of a generation job."""
