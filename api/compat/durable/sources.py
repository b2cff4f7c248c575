"""What a Durable Stream URL reads from: a user stream (``UserStream``, written through the
protocol) or a job's events (``JobStream``, read-only, closed at the job's ``end``).

Both name a hub topic, so live readers of either follow it through the process's hub; both
hand entries whose ids are the offsets (``protocol.offset_of``).
"""

from __future__ import annotations

from typing import Protocol

from api.state import Relay
from tokenrelay.store.streams import CLOSED, MESSAGES, Entry, Snapshot, StreamState
from tokenrelay.wire import TERMINAL_STATUSES, ZERO_ID, EventId

JOB_CONTENT_TYPE = "application/json"


class Messages(Protocol):
    """How a source's entries read: what a page of them carries (``reading.page_of``)."""

    def message(self, entry: Entry) -> bytes | None:
        """The entry's message bytes; None for an entry that carries none."""

    def carries(self, kind: str) -> bool:
        """Whether entries of type ``kind`` are messages."""

    def closes(self, kind: str) -> bool:
        """Whether the stream is closed once an entry of type ``kind`` is read."""


class Source(Messages, Protocol):
    topic: str
    writable: bool

    async def snapshot(self, after: EventId | None, count: int) -> Snapshot | None:
        """State and up to ``count`` entries after ``after`` (None: at the tail, no entries);
        None if there is no stream. A read: resets a sliding TTL."""

    async def state(self) -> StreamState | None:
        """State only (HEAD; a sliding TTL is not reset)."""


class UserStream:
    """A stream created with PUT: its entries are its messages and its close marker."""

    writable = True

    def __init__(self, r: Relay, topic: str, owner: str) -> None:
        self.store = r.durable
        self.topic = topic
        self.owner = owner

    async def snapshot(self, after: EventId | None, count: int) -> Snapshot | None:
        return await self.store.read(self.topic, self.owner, after, count)

    async def state(self) -> StreamState | None:
        return await self.store.head(self.topic, self.owner)

    def message(self, entry: Entry) -> bytes | None:
        return entry.data if entry.type in MESSAGES else None

    def carries(self, kind: str) -> bool:
        return kind in MESSAGES

    def closes(self, kind: str) -> bool:
        return kind == CLOSED


def job_message(entry: Entry) -> bytes:
    """A job event as one JSON message: ``{"type", "data", "id"}`` (data as stored)."""
    return b'{"type":"%s","data":%s,"id":"%s"}' % (
        entry.type.encode(),
        entry.data,
        str(entry.id).encode(),
    )


class JobStream:
    """A job's events as a JSON stream: each event one message, the stream closed at ``end``.
    The caller has checked the job is the tenant's."""

    writable = False

    def __init__(self, r: Relay, job_id: str) -> None:
        self.r = r
        self.topic = job_id

    async def _tail(self) -> tuple[EventId, bool] | None:
        status, last = await self.r.jobs.job_fields(self.topic, "status", "last_event_id")
        if status is None:
            return None
        return (EventId.parse(last) if last else ZERO_ID), status in TERMINAL_STATUSES

    async def snapshot(self, after: EventId | None, count: int) -> Snapshot | None:
        found = await self._tail()
        if found is None:
            return None
        tail, closed = found
        if after is None:
            return Snapshot(JOB_CONTENT_TYPE, tail, closed, [])
        events = await self.r.events.read(self.topic, after, count=count)
        entries = [Entry(EventId.parse(e.id), e.type, e.data) for e in events]
        if entries and entries[-1].id > tail:  # events came between the two reads
            tail, closed = entries[-1].id, entries[-1].type == "end"
        return Snapshot(JOB_CONTENT_TYPE, tail, closed, entries)

    async def state(self) -> StreamState | None:
        found = await self._tail()
        if found is None:
            return None
        return StreamState(JOB_CONTENT_TYPE, found[0], found[1], None, None)

    def message(self, entry: Entry) -> bytes | None:
        return job_message(entry)

    def carries(self, kind: str) -> bool:
        return True

    def closes(self, kind: str) -> bool:
        return kind == "end"
