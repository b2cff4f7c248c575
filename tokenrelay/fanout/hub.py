"""The hub: every listener of this process, what job each follows and from which event, fed
by the readers (``tokenrelay.fanout.readers``).

A listener first replays what it missed with XRANGE, then subscribes at its last event id. The
hub tails each followed stream from a cursor and hands every listener each batch together with
the cursor the batch started from; a listener whose last id is behind that cursor fills the gap
itself with XRANGE before taking the batch. That one rule makes late joiners, slow listeners
whose queue overflowed and reader restarts all exact: nothing lost, nothing repeated.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode

from tokenrelay.fanout.readers import READ_COUNT, Readers
from tokenrelay.store.events import EventLog, StoredEvent
from tokenrelay.wire import EventId

MAX_QUEUED_BATCHES = 256
"""A listener that falls this far behind drops its queue and catches up from Redis instead."""


class Batch:
    """Events handed to listeners together. Listeners given the same batch share its wire
    encoding: with a thousand listeners on a job, a batch is encoded once, not a thousand
    times."""

    __slots__ = ("_encoded", "events")

    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events
        self._encoded: dict[str, bytes] = {}

    def encoded(self, fmt: str, render: Callable[[list[StoredEvent]], bytes]) -> bytes:
        data = self._encoded.get(fmt)
        if data is None:
            data = self._encoded[fmt] = render(self.events)
        return data


EMPTY = Batch([])


class Subscription:
    """One listener's view of a job's events after a given id. Use ``async with``."""

    def __init__(self, hub: Hub, job_id: str, after: EventId) -> None:
        self.hub = hub
        self.job_id = job_id
        self.last = after
        self._queue: deque[tuple[EventId, Batch]] = deque()
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Subscription:
        self.hub._add(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.hub._remove(self)

    def _push(self, start: EventId, batch: Batch) -> None:
        if len(self._queue) >= MAX_QUEUED_BATCHES:
            # Too slow to keep up: forget the backlog, remember only where it started.
            # Readers never slow the hub or each other; this one refills from Redis.
            first_start = self._queue[0][0]
            self._queue.clear()
            self._queue.append((first_start, EMPTY))
        self._queue.append((start, batch))
        self._ready.set()

    async def next(self, idle_s: float) -> list[Batch] | None:
        """The next events after ``last``, in order, as batches; None if nothing came within
        ``idle_s``. Each event is handed out once."""
        if not self._queue:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), idle_s)
            except TimeoutError:
                return None
        out: list[Batch] = []
        while self._queue:
            start, batch = self._queue.popleft()
            if self.last < start:
                filled = await self._fill(start)
                if filled:
                    out.append(Batch(filled))
            events = batch.events
            if events and EventId.parse(events[0].id) <= self.last:
                events = [event for event in events if EventId.parse(event.id) > self.last]
                batch = Batch(events)  # a part: its own encoding
            if events:
                out.append(batch)
                self.last = EventId.parse(events[-1].id)
        return out

    async def _fill(self, upto: EventId) -> list[StoredEvent]:
        filled: list[StoredEvent] = []
        while self.last < upto:
            chunk = await self.hub.log.read(self.job_id, self.last, count=READ_COUNT)
            chunk = [event for event in chunk if EventId.parse(event.id) <= upto]
            if not chunk:
                break
            filled += chunk
            self.last = EventId.parse(chunk[-1].id)
        return filled


class Hub:
    """Follows every stream some listener of this process is on, through the readers; hands
    each listener every new event once, in order."""

    def __init__(self, log_: EventLog, connect: Callable[[ClusterNode | None], Redis]) -> None:
        """``connect(node)`` makes a plain client of the node (``None``: the single server)."""
        self.log = log_
        self._subs: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, EventId] = {}
        self._readers = Readers(log_.redis, connect, self)

    def subscribe(self, job_id: str, after: EventId) -> Subscription:
        return Subscription(self, job_id, after)

    @property
    def streams(self) -> int:
        """Jobs this process follows now."""
        return len(self._cursors)

    @property
    def listeners(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    async def aclose(self) -> None:
        await self._readers.aclose()

    # --- what the readers see of the hub (``readers.Followed``) ---

    def cursor(self, job_id: str) -> EventId | None:
        """Where the job's stream is to be read from next; None if nobody follows it."""
        return self._cursors.get(job_id)

    def deliver(self, job_id: str, start: EventId, events: list[StoredEvent]) -> None:
        """Hand listeners the events read after ``start`` (the cursor the read used)."""
        current = self._cursors.get(job_id)
        if current is None or not events:  # nobody follows it any more
            return
        self._cursors[job_id] = max(current, EventId.parse(events[-1].id))
        batch = Batch(events)
        for sub in self._subs.get(job_id, ()):
            sub._push(start, batch)

    # --- listeners coming and going ---

    def _add(self, sub: Subscription) -> None:
        subs = self._subs.setdefault(sub.job_id, set())
        subs.add(sub)
        cursor = self._cursors.get(sub.job_id)
        if cursor is None:
            self._cursors[sub.job_id] = sub.last
            try:
                self._readers.follow(sub.job_id)
            except BaseException:
                # No reader follows the job (no cluster node holds it now): forget it, or
                # the next listener would find its cursor and wait on a reader that is not.
                self._remove(sub)
                raise
        elif sub.last < cursor:
            # Events up to the cursor were handed out before this listener came: fetch them.
            sub._push(cursor, EMPTY)

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.job_id]
            self._cursors.pop(sub.job_id, None)
