"""Hub: shared XREAD BLOCK readers (one per process, or one per shard on a Redis Cluster),
fanning new events out to every listener.

A listener first replays what it missed with XRANGE, then subscribes at its last event id. The
hub tails each followed stream from a cursor and hands every listener each batch together with
the cursor the batch started from; a listener whose last id is behind that cursor fills the gap
itself with XRANGE before taking the batch. That one rule makes late joiners, slow listeners
whose queue overflowed and reader restarts all exact: nothing lost, nothing repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenrelay.keys import events_key, job_of, shard_of, shard_tag
from tokenrelay.store.connections import READER_BLOCK_S, is_cluster
from tokenrelay.store.events import EventLog, StoredEvent
from tokenrelay.wire import EventId

log = structlog.get_logger("tokenrelay.fanout")

BLOCK_MS = int(READER_BLOCK_S * 1000)
READ_COUNT = 1000
MAX_QUEUED_BATCHES = 256
"""A listener that falls this far behind drops its queue and catches up from Redis instead."""
WAKE_PATIENCE_S = 0.5
"""How long a new job's waker tries CLIENT UNBLOCK before it resets the reader's connection."""
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
"""A failing reader retries after these pauses (doubling), or when a job is added; a read that
works resets them."""


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


class _NodeReader:
    """One blocking XREAD loop over the followed streams that live on one Redis node.

    A job added while a read is blocked joins the next read: ``add`` interrupts the blocked one
    with CLIENT UNBLOCK sent over a second connection, and makes sure it worked (see ``_wake``).
    """

    def __init__(self, hub: Hub, node: str, reader: Redis, control: Redis) -> None:
        self.hub = hub
        self.node = node
        self.jobs: set[str] = set()
        self._reader = reader  # kept blocked in XREAD: a connection of its own
        self._control = control  # for CLIENT UNBLOCK on the same node
        for client in (reader, control):
            # A reconnect must never be silent: the reader's new connection has a new client
            # id, which the hub must learn before it can unblock it; and a waker must not
            # stall in redis-py's backoff (redis-py 6 retries three times by default).
            client.set_retry(Retry(NoBackoff(), 0))
        self._client_id: int | None = None
        self._read: asyncio.Future[Any] | None = None  # the XREAD in flight
        self._reading: frozenset[str] | None = None  # the jobs it covers
        self._generation = 0  # reads begun so far
        self._read_started = asyncio.Event()
        self._waker: asyncio.Task[None] | None = None
        self._delay = RETRY_FIRST_S
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"tokenrelay-hub-{node}")

    def add(self, job_id: str) -> None:
        """Follow ``job_id`` too, from the next read on (interrupting a blocked one). However
        many jobs are added at once, one waker at a time interrupts the read."""
        self.jobs.add(job_id)
        self._changed.set()
        reading = self._reading
        if self._waker is None and reading is not None and job_id not in reading:
            self._waker = asyncio.create_task(self._wake(), name=f"tokenrelay-hub-wake-{self.node}")

    def _behind(self) -> bool:
        """Whether the read in flight leaves out a followed job (none in flight: no, the
        next read takes every job)."""
        reading = self._reading
        if reading is None:
            return False
        cursors = self.hub._cursors
        return any(job not in reading and job in cursors for job in self.jobs)

    async def _wake(self) -> None:
        """Interrupt the read in flight until a read that covers every followed job has begun.

        CLIENT UNBLOCK answers 0 when the XREAD has not reached Redis yet, or when the client
        id is stale: then it is sent again after a short pause. A connection error on the
        control connection (Redis restarted) is retried at once on a new connection. The read
        generation tells when a new read began. If none did within ``WAKE_PATIENCE_S``, the
        read is cancelled: the reader reconnects, learns its new client id and reads again.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAKE_PATIENCE_S
        pause = 0.005
        try:
            while self._behind():
                if loop.time() >= give_up:
                    log.warning("hub_reader_reset", node=self.node, client_id=self._client_id)
                    if self._read is not None:
                        self._read.cancel()
                    return
                generation = self._generation
                self._read_started.clear()
                client_id = self._client_id
                unblocked = client_id is not None and await self._unblock(client_id, give_up)
                if self._generation == generation:
                    # Unblocked: the reader loops into a new read at once; give it a moment.
                    wait = 0.2 if unblocked else pause
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, min(wait, give_up - loop.time()))):
                            await self._read_started.wait()
                    pause = min(pause * 2, 0.1)
        finally:
            self._waker = None

    async def _unblock(self, client_id: int, deadline: float) -> bool:
        """CLIENT UNBLOCK ``client_id``: True if it interrupted a blocked command. The control
        connection may be stale (Redis restarted): after a connection error, try once more on
        a new one."""
        for _ in range(2):
            try:
                async with asyncio.timeout_at(deadline):
                    return bool(await self._control.client_unblock(client_id))
            except TimeoutError:
                return False
            except (RedisConnectionError, RedisTimeoutError, OSError):
                continue
            except RedisError:
                return False
        return False

    async def aclose(self) -> None:
        for task in (self._waker, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._reader.aclose()
        await self._control.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._read_forever()
            except ResponseError as exc:
                # MOVED / ASK / CLUSTERDOWN: the slots moved (resharding, failover).
                self._client_id = None
                log.warning("hub_reader_moved", node=self.node, error=str(exc)[:120])
                await self.hub._reroute(self)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._client_id = None
                log.warning("hub_reader_retry", node=self.node, error=type(exc).__name__)
                if self.hub.cluster:
                    await self.hub._reroute(self)
            except Exception as exc:
                # Never die: every listener of these streams depends on this task.
                self._client_id = None
                log.error("hub_reader_failed", error=type(exc).__name__, exc_info=exc)
            # Back off, but a new listener tries again at once: Redis may be back by then.
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._delay):
                    await self._changed.wait()
            self._delay = min(self._delay * 2, RETRY_MAX_S)

    async def _read_forever(self) -> None:
        while True:
            if self._client_id is None:
                self._client_id = int(await self._reader.client_id())
            cursors = self.hub._cursors
            self.jobs = {job for job in self.jobs if job in cursors}
            if not self.jobs:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            used = {job: cursors[job] for job in self.jobs}
            streams: dict[Any, Any] = {events_key(job): str(cur) for job, cur in used.items()}
            # A task of its own, so a waker can cancel the read without cancelling the loop.
            self._read = asyncio.ensure_future(
                self._reader.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            )
            self._reading = frozenset(used)
            self._generation += 1
            self._read_started.set()
            try:
                reply = await self._read
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the hub is closing
                # Cancelled by a waker: redis-py closed the connection; the next command opens
                # a new one, with a new client id.
                self._client_id = None
                continue
            finally:
                self._read = None
                self._reading = None
            self._delay = RETRY_FIRST_S
            for key, entries in reply or []:
                job_id = job_of(key.decode())
                self.hub._deliver(job_id, used[job_id], entries)


class Hub:
    """Follows every stream some listener of this process is on: one blocking reader per
    Redis node (one in all, without a cluster; a cross-slot XREAD is not allowed in one)."""

    def __init__(self, log_: EventLog, connect: Callable[[ClusterNode | None], Redis]) -> None:
        """``connect(node)`` makes a plain client of the node (``None``: the single server)."""
        self.log = log_
        self.cluster = is_cluster(log_.redis)
        self._connect = connect
        self._subs: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, EventId] = {}
        self._readers: dict[str, _NodeReader] = {}
        self._topology_lock = asyncio.Lock()
        self._topology_at = 0.0

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
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.aclose()

    def _reader_for(self, job_id: str) -> _NodeReader:
        """The reader of the job's shard (cluster: a cross-slot XREAD is refused, even on one
        node), or the one reader of a single server."""
        node: ClusterNode | None = None
        name = "single"
        if self.cluster:
            shard = shard_of(job_id)
            found = cast(RedisCluster, self.log.redis).get_node_from_key(shard_tag(shard))
            if found is None:
                raise RedisError(f"no cluster node holds shard {shard}")
            node, name = found, f"s{shard}@{found.name}"
        reader = self._readers.get(name)
        if reader is None:
            reader = _NodeReader(self, name, self._connect(node), self._connect(node))
            self._readers[name] = reader
        return reader

    async def _reroute(self, reader: _NodeReader) -> None:
        """After MOVED or a lost node: learn the slots again (at most once a second), then
        hand each of the reader's jobs to the reader of its shard's current node."""
        if not self.cluster:
            return
        async with self._topology_lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self._topology_at > 1.0:
                with contextlib.suppress(RedisError, OSError):
                    await cast(RedisCluster, self.log.redis).nodes_manager.initialize()
                self._topology_at = loop.time()
        moved, reader.jobs = reader.jobs, set()
        if self._readers.get(reader.node) is reader:
            del self._readers[reader.node]
            asyncio.get_running_loop().create_task(reader.aclose())
        for job_id in moved:
            if job_id in self._cursors:
                self._reader_for(job_id).add(job_id)

    def _add(self, sub: Subscription) -> None:
        subs = self._subs.setdefault(sub.job_id, set())
        subs.add(sub)
        cursor = self._cursors.get(sub.job_id)
        if cursor is None:
            self._cursors[sub.job_id] = sub.last
            self._reader_for(sub.job_id).add(sub.job_id)
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

    def _deliver(
        self, job_id: str, start: EventId, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> None:
        """Hand listeners the events read after ``start`` (the cursor this read used)."""
        current = self._cursors.get(job_id)
        if current is None or not entries:  # nobody follows it any more
            return
        events = [StoredEvent(eid.decode(), f[b"t"].decode(), f[b"d"]) for eid, f in entries]
        self._cursors[job_id] = max(current, EventId.parse(events[-1].id))
        batch = Batch(events)
        for sub in self._subs.get(job_id, ()):
            sub._push(start, batch)
