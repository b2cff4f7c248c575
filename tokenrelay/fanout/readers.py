"""The readers: blocking XREADs over the streams the hub follows, one per Redis node (one in
all on a single server; one per shard on a cluster, where a cross-slot XREAD is refused), each
handing what it reads to the hub (``Followed``). A job added while a read is blocked joins it
at once (CLIENT UNBLOCK, checked); after MOVED or a lost node, jobs move to their new node's
reader."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenrelay.keys import events_key, job_of, shard_of, shard_tag
from tokenrelay.store.connections import (
    READER_BLOCK_S,
    Streams,
    close,
    follow_primary,
    is_cluster,
    named_primary,
)
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import EventId

log = structlog.get_logger("tokenrelay.fanout")

BLOCK_MS = int(READER_BLOCK_S * 1000)
READ_COUNT = 1000
WAKE_PATIENCE_S = 0.5
"""How long a new job's waker tries CLIENT UNBLOCK before it resets the reader's connection."""
RETRY_FIRST_S = 0.05
FOLLOW_PRIMARY_S = 1.0
"""On Sentinel: how often a reader asks the Sentinels whether it reads the primary."""
RETRY_MAX_S = 2.0
"""A failing reader retries after these pauses (doubling), or when a job is added; a read that
works resets them."""


class Followed(Protocol):
    """What the readers need of the hub."""

    def cursor(self, job_id: str) -> EventId | None:
        """Where to read the job's stream from next; None once nobody follows it."""

    def deliver(self, job_id: str, start: EventId, events: list[StoredEvent]) -> None:
        """The events a read found after ``start`` (the cursor it used)."""


class NodeReader:
    """One blocking XREAD loop over the followed streams that live on one Redis node.

    A job added while a read is blocked joins the next read: ``add`` interrupts the blocked one
    with CLIENT UNBLOCK sent over a second connection, and makes sure it worked (see ``_wake``).
    """

    def __init__(self, readers: Readers, node: str, reader: Redis, control: Redis) -> None:
        self.readers = readers
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
        self._stale = False  # the reader's connection is not to the primary the Sentinels name
        self._task = asyncio.create_task(self._run(), name=f"tokenrelay-hub-{node}")
        self._watcher: asyncio.Task[None] | None = None
        if isinstance(reader.connection_pool, SentinelConnectionPool):
            self._watcher = asyncio.create_task(
                self._watch_primary(reader.connection_pool), name=f"tokenrelay-hub-watch-{node}"
            )

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
        followed = self.readers.followed
        return any(job not in reading and followed.cursor(job) is not None for job in self.jobs)

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
        try:
            await self._wake_until_covered(loop, give_up)
        except Exception as exc:  # never leave a listener waiting for the block to time out
            log.warning("hub_wake_failed", node=self.node, error=type(exc).__name__)
            if self._read is not None:
                self._read.cancel()
        finally:
            self._waker = None

    async def _wake_until_covered(self, loop: asyncio.AbstractEventLoop, give_up: float) -> None:
        pause = 0.005
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
            except (RedisConnectionError, RedisTimeoutError, OSError, RuntimeError):
                # RuntimeError: redis-py wrote to a transport that had closed under it (the
                # server went away); it keeps that connection unless told to drop it.
                connection = self._control.connection
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.disconnect()
                continue
            except RedisError:
                return False
        return False

    async def aclose(self) -> None:
        for task in (self._waker, self._watcher, self._task):
            # Cancelled again until it ends: a cancel that lands as redis-py connects can be
            # swallowed (a timeout racing it), and the loop would then wait on forever.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        await close(self._reader)
        await close(self._control)

    async def _run(self) -> None:
        while True:
            try:
                await self._read_forever()
            except ResponseError as exc:
                # MOVED / ASK / CLUSTERDOWN: the slots moved (resharding, failover).
                self._client_id = None
                log.warning("hub_reader_moved", node=self.node, error=str(exc)[:120])
                await self._reroute()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._client_id = None
                log.warning("hub_reader_retry", node=self.node, error=type(exc).__name__)
                if self.readers.cluster:
                    await self._reroute()
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

    async def _reroute(self) -> None:
        """``Readers.reroute``, never raising: it runs in ``_run``'s error handlers, and a
        reader whose task ended would leave its jobs followed by nobody (their listeners would
        wait for ever). Failed, the jobs stay here: the next read fails again and retries."""
        try:
            await self.readers.reroute(self)
        except Exception as exc:
            log.error("hub_reroute_failed", node=self.node, error=type(exc).__name__, exc_info=exc)

    async def _watch_primary(self, pool: SentinelConnectionPool) -> None:
        """On Sentinel, every ``FOLLOW_PRIMARY_S``: is the reader's connection still to the
        primary the Sentinels name? If not (a split brain left it on another, which takes no
        error), cancel the read in flight; the loop moves both connections before its next."""
        while True:
            await asyncio.sleep(FOLLOW_PRIMARY_S)
            with contextlib.suppress(Exception):
                primary = await named_primary(pool)
                connection = self._reader.connection
                if primary is None or connection is None or not connection.is_connected:
                    continue
                if (connection.host, connection.port) != primary:
                    self._stale = True
                    if self._read is not None:
                        self._read.cancel()

    async def _read_forever(self) -> None:
        while True:
            if self._stale:
                self._stale = False
                self._client_id = None
                await follow_primary(self._reader)
                await follow_primary(self._control)
                log.warning("hub_reader_moved", node=self.node, why="not the named primary")
            if self._client_id is None:
                self._client_id = int(await self._reader.client_id())
            followed = self.readers.followed
            cursors = {job: followed.cursor(job) for job in self.jobs}
            used = {job: cursor for job, cursor in cursors.items() if cursor is not None}
            self.jobs = set(used)
            if not self.jobs:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
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
                events = [StoredEvent(i.decode(), f[b"t"].decode(), f[b"d"]) for i, f in entries]
                followed.deliver(job_id, used[job_id], events)


class Readers(Mapping[str, NodeReader]):
    """The node readers of one hub, by node name; routes each followed job to the reader of
    the node holding its stream."""

    def __init__(
        self, redis: Streams, connect: Callable[[ClusterNode | None], Redis], followed: Followed
    ) -> None:
        """``connect(node)`` makes a plain client of the node (``None``: the single server)."""
        self.redis = redis
        self.cluster = is_cluster(redis)
        self.followed = followed
        self._connect = connect
        self._readers: dict[str, NodeReader] = {}
        self._topology_lock = asyncio.Lock()
        self._topology_at = 0.0

    def __getitem__(self, node: str) -> NodeReader:
        return self._readers[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)

    def follow(self, job_id: str) -> None:
        """Read the job's stream from its cursor on, from the next read of its node's reader
        (interrupting a blocked one). Raises ``RedisError`` when no cluster node holds it."""
        self._reader_for(job_id).add(job_id)

    async def aclose(self) -> None:
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.aclose()

    def _reader_for(self, job_id: str) -> NodeReader:
        """The reader of the job's shard (cluster: a cross-slot XREAD is refused, even on one
        node), or the one reader of a single server."""
        name, node = self._place(job_id)
        reader = self._readers.get(name)
        if reader is None:
            reader = NodeReader(self, name, self._connect(node), self._connect(node))
            self._readers[name] = reader
        return reader

    def _place(self, job_id: str) -> tuple[str, ClusterNode | None]:
        """The name of the job's reader and the node it reads from (``None``: the single
        server). Raises ``RedisError`` when no cluster node holds the job's shard."""
        if not self.cluster:
            return "single", None
        shard = shard_of(job_id)
        try:
            found = cast(RedisCluster, self.redis).get_node_from_key(shard_tag(shard))
        except RedisClusterException as exc:  # SlotNotCoveredError: not a RedisError
            raise RedisError(f"no cluster node holds shard {shard}: {exc}") from exc
        if found is None:
            raise RedisError(f"no cluster node holds shard {shard}")
        return f"s{shard}@{found.name}", found

    async def reroute(self, reader: NodeReader) -> None:
        """After MOVED or a lost node: learn the slots again (at most once a second), then
        hand each of the reader's jobs to the reader of its shard's current node. If a job's
        node is unknown, the jobs stay with ``reader``, which tries again after its pause."""
        if not self.cluster:
            return
        async with self._topology_lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self._topology_at > 1.0:
                try:
                    await cast(RedisCluster, self.redis).nodes_manager.initialize()
                except Exception as exc:
                    # Not only RedisError: redis-py raises RedisClusterException (nodes that
                    # disagree, none reachable), and RuntimeError when the cluster client's own
                    # initialize runs at the same time (a dict changed while iterated).
                    log.warning("hub_topology_failed", error=f"{type(exc).__name__}: {exc}"[:200])
                self._topology_at = loop.time()
        followed = [job for job in reader.jobs if self.followed.cursor(job) is not None]
        try:
            for job_id in followed:
                self._place(job_id)
        except RedisError as exc:
            log.warning("hub_reroute_deferred", node=reader.node, error=str(exc)[:120])
            return
        reader.jobs = set()
        if self._readers.get(reader.node) is reader:
            del self._readers[reader.node]
            asyncio.get_running_loop().create_task(reader.aclose())
        for job_id in followed:
            self._reader_for(job_id).add(job_id)
