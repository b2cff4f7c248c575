"""A job's events on a Redis Stream: read (``EventLog``) and written (``EventWriter``).

Each batch of a job's events is appended atomically with its text and status fields (one Lua
call, ``lua/append.lua``), exactly once by sequence number.

Writes go through ``EventWriter``: one per process, it coalesces whatever every job published
while the previous write was in flight into one pipelined round trip of atomic Lua appends.
Each event stays its own stream entry, so resuming stays exact per event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from tokenrelay.errors import (
    EventIdExpired,
    Fenced,
    InvalidEventId,
    StoreUnavailable,
    quoted,
)
from tokenrelay.keys import events_key, job_key, job_keys, pending_key
from tokenrelay.resilience import Backoff, is_transient
from tokenrelay.store.connections import Streams, eval_many, is_cluster, script
from tokenrelay.wire import EVENT_TYPES, ZERO_ID, EndEvent, Event, EventId, encode

log = structlog.get_logger("tokenrelay.events")

_LUA = resources.files("tokenrelay.store") / "lua"
APPEND_LUA = (_LUA / "append.lua").read_text()
CLAIM_LUA = (_LUA / "claim_fn.lua").read_text() + (
    "\nreturn claim(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"
)
FAIL_LUA = (_LUA / "publish_fn.lua").read_text() + (_LUA / "fail.lua").read_text()
FINISH_QUEUED_LUA = (_LUA / "finish_queued.lua").read_text()
READ_JOB_LUA = (_LUA / "read_job.lua").read_text()

_TYPES = {name: name.encode() for name in EVENT_TYPES}  # the stream's "t" field, encoded once

MAX_EVENTS_PER_CALL = 512
"""A long batch is split so one Lua call never holds Redis for long."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back: its data stays the JSON bytes that were written."""

    id: str
    type: str
    data: bytes

    def json(self) -> dict[str, Any]:
        value = orjson.loads(self.data)
        assert isinstance(value, dict)
        return value


def _decode_entries(entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> list[StoredEvent]:
    return [
        StoredEvent(eid.decode(), fields[b"t"].decode(), fields[b"d"]) for eid, fields in entries
    ]


class EventLog:
    """Reads of a job's events on the streams Redis (one node or a cluster). Clients must not
    decode responses."""

    def __init__(self, redis: Streams) -> None:
        self.redis = redis

    async def read(self, job_id: str, after: EventId, count: int = 1000) -> list[StoredEvent]:
        """Up to ``count`` events strictly after ``after``, oldest first."""
        entries = await self.redis.xrange(events_key(job_id), min=f"({after}", max="+", count=count)
        return _decode_entries(entries)

    async def last_id(self, job_id: str) -> EventId:
        """The newest event id of the job, or ``0-0`` when it has none yet."""
        entries = await self.redis.xrevrange(events_key(job_id), count=1)
        return EventId.parse(entries[0][0].decode()) if entries else ZERO_ID

    async def check_resume_point(self, job_id: str, after: EventId) -> None:
        """Raise unless ``after`` is a resume point the job can serve exactly.

        ``InvalidEventId`` if ``after`` is later than the last event id the job issued (or it
        issued none); ``EventIdExpired`` if events after it were trimmed away (MAXLEN).

        The status hash counts every event ever appended (``nevents``, kept with
        ``last_event_id`` by the same Lua call that appends): fewer entries in the stream mean
        its oldest were trimmed, and an ``after`` before the first entry kept then lost some.
        Only trimming removes events (tokenrelay never XDELs one), and nothing here needs more
        than Redis 6.2 (``XINFO STREAM``'s ``entries-added`` and ``max-deleted-entry-id`` are
        7.0's).
        """
        if after == ZERO_ID:
            return
        # The stream first, then the hash (one node either way: the keys share a hash tag). An
        # append landing in between can only make the count of trimmed events look larger,
        # never hide a trim.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(events_key(job_id))
            pipe.xrange(events_key(job_id), count=1)
            pipe.hmget(job_key(job_id), ["nevents", "last_event_id"])
            kept, first, (appended, last) = await pipe.execute()
        if (last is None or after > EventId.parse(last.decode())) and not await self._staged(
            job_id, after
        ):
            raise InvalidEventId(f"event id {quoted(after)} was never issued for this job")
        trimmed = int(appended or 0) > int(kept)
        if trimmed and first and after < EventId.parse(first[0][0].decode()):
            raise EventIdExpired(f"events after {quoted(after)} are no longer kept")

    async def _staged(self, job_id: str, after: EventId) -> bool:
        """Whether ``after`` was staged (durability ``replicated``): a listener saw it on a
        primary that a failover lost, and the job's next publish brings it back, same id."""
        newest = await self.redis.xrevrange(pending_key(job_id), count=1)
        return bool(newest) and after <= EventId.parse(newest[0][0].decode())


# --- writing ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    job_id: str
    owner: str
    seq: int
    done: asyncio.Future[str]
    events: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    final_ttl: int = 0

    def args(self, maxlen: int, safety_ttl: int) -> list[Any]:
        argv: list[Any] = [
            self.owner,
            self.seq,
            maxlen,
            self.final_ttl,
            safety_ttl,
            len(self.fields),
        ]
        for name, value in self.fields.items():
            argv += (name, value)
        for triple in self.events:
            argv += triple
        return argv


class EventWriter:
    """Coalesces the appends of every job in this process into pipelined round trips.

    ``JobStream.publish`` never waits for Redis. Order per job is kept: a job has at most one
    open batch, batches are written in the order they were opened, and rounds run one at a time.

    A batch that meets a transient Redis error (``tokenrelay.resilience``) is sent again, with
    backoff, for up to ``retry_s``; a retried batch is applied exactly once (its sequence number
    says what Redis already has). Past the budget, or on a permanent error, the batch fails
    with ``StoreUnavailable`` (or the error itself; ``Fenced`` for a job taken from its owner).
    """

    def __init__(
        self, redis: Streams, *, maxlen: int, safety_ttl_s: int, retry_s: float = 30.0
    ) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self.safety_ttl_s = safety_ttl_s
        self.retry_s = retry_s
        self._script = script(redis, APPEND_LUA)
        self._queue: list[_Batch] = []
        self._open: dict[str, _Batch] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_cancel: dict[str, Callable[[], None]] = {}
        self.rounds = 0
        self.events_written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenrelay-event-writer")

    async def aclose(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        if self._queue:
            await asyncio.wait([self._queue[-1].done], timeout=self.retry_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def stream(
        self, job_id: str, owner: str, seq: int, on_cancel: Callable[[], None] | None = None
    ) -> JobStream:
        """A writer of the job's events from event ``seq`` on; ``on_cancel`` is called once
        when a write's reply says a cancel was asked for (in case its message was lost)."""
        if on_cancel is not None:
            self._on_cancel[job_id] = on_cancel
        return JobStream(self, job_id, owner, seq)

    def forget(self, job_id: str) -> None:
        self._on_cancel.pop(job_id, None)

    def _batch(self, job_id: str, owner: str, seq: int) -> _Batch:
        batch = self._open.get(job_id)
        if batch is None or len(batch.events) >= MAX_EVENTS_PER_CALL or batch.final_ttl:
            batch = _Batch(job_id, owner, seq, asyncio.get_running_loop().create_future())
            self._open[job_id] = batch
            self._queue.append(batch)
            self._wake.set()
        return batch

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batches, self._queue, self._open = self._queue, [], {}
            if batches:
                try:
                    await self._write(batches)
                except Exception as exc:  # a bug: fail these batches, never the writer
                    log.error("event_write_failed", error=type(exc).__name__, exc_info=exc)
                    for batch in batches:
                        if not batch.done.done():
                            batch.done.set_exception(exc)

    async def _write(self, batches: list[_Batch]) -> None:
        """Write the batches, again and again for those that met a transient error, until all
        are settled or the retry budget is spent."""
        backoff = Backoff(self.retry_s)
        pending = batches
        while pending:
            try:
                results = await self._execute(pending)
            except (RedisError, OSError) as exc:
                results = [exc] * len(pending)
            self.rounds += 1
            retry: list[_Batch] = []
            stalled: set[str] = set()  # jobs with a batch to send again: later ones wait too
            last_error: BaseException | None = None
            for batch, result in zip(pending, results, strict=True):
                if isinstance(result, BaseException) and _retryable(result, batch, stalled):
                    retry.append(batch)
                    stalled.add(batch.job_id)
                    last_error = result
                else:
                    self._settle(batch, result)
            if not retry:
                return
            log.warning("event_write_retry", error=type(last_error).__name__, batches=len(retry))
            if not await backoff.wait():
                for batch in retry:
                    failure = StoreUnavailable(f"event write failed for {self.retry_s:g} s")
                    failure.__cause__ = last_error
                    self._settle(batch, failure)
                return
            pending = retry

    def _settle(self, batch: _Batch, result: Any) -> None:
        if batch.done.done():
            return
        if isinstance(result, BaseException):
            fenced = isinstance(result, ResponseError) and "FENCED" in str(result)
            batch.done.set_exception(Fenced(str(result)) if fenced else result)
            return
        last_id, cancel = result[0], result[1]
        self.events_written += len(batch.events)
        if cancel:
            on_cancel = self._on_cancel.pop(batch.job_id, None)
            if on_cancel is not None:
                on_cancel()
        batch.done.set_result(last_id.decode() if isinstance(last_id, bytes) else str(last_id))

    async def _execute(self, batches: list[_Batch]) -> list[Any]:
        calls = [(job_keys(b.job_id), b.args(self.maxlen, self.safety_ttl_s)) for b in batches]
        if is_cluster(self.redis):
            # redis-py's cluster pipeline refuses EVALSHA: send the calls side by side instead
            # (one round trip per node connection, in parallel; the client follows MOVED).
            sent = [self._script(keys=list(keys), args=args) for keys, args in calls]
            return list(await asyncio.gather(*sent, return_exceptions=True))
        return await eval_many(cast(Redis, self.redis), self._script, calls)


def _retryable(error: BaseException, batch: _Batch, stalled: set[str]) -> bool:
    """Whether a batch's error is worth sending it again: a transient error, or a GAP behind
    an earlier batch of the same job that is itself to be sent again."""
    if is_transient(error):
        return True
    return batch.job_id in stalled and isinstance(error, ResponseError) and "GAP" in str(error)


class JobStream:
    """One attempt's writer of a job's events. Not safe to share between tasks."""

    def __init__(self, writer: EventWriter, job_id: str, owner: str, seq: int) -> None:
        self._writer = writer
        self.job_id = job_id
        self.owner = owner
        self.seq = seq
        self.failed: BaseException | None = None
        self._last: asyncio.Future[str] | None = None

    def publish(
        self, event: Event, *, text: str = "", fields: Mapping[str, str] | None = None
    ) -> None:
        """Queue one event (its ``id`` is ignored: Redis assigns it), the ``text`` it adds to
        the job's text, and status-hash fields to set with it; returns at once.

        Raises what an earlier write of this stream raised (``Fenced``, ``StoreUnavailable``,
        a permanent Redis error).
        """
        if self.failed is not None:
            raise self.failed
        batch = self._writer._batch(self.job_id, self.owner, self.seq)
        batch.events.append((_TYPES[event.type], encode(event), text.encode()))
        if fields:
            batch.fields.update(fields)
        self.seq += 1
        if batch.done is not self._last:
            batch.done.add_done_callback(self._on_written)
            self._last = batch.done

    def _on_written(self, done: asyncio.Future[str]) -> None:
        if not done.cancelled() and done.exception() is not None and self.failed is None:
            self.failed = done.exception()

    async def finish(self, end: EndEvent, fields: Mapping[str, str], ttl_s: int) -> str:
        """Publish ``end`` with the final status fields and wait until all is written.

        Returns the id of the ``end`` event; raises what the writes raised (``Fenced`` if the
        job was taken from this attempt). The job's keys then expire after ``ttl_s``.
        """
        self.publish(end, fields=fields)
        self._writer._open[self.job_id].final_ttl = ttl_s
        return await self.flush()

    async def flush(self) -> str:
        """Wait until everything published so far is written; return the last event id."""
        if self._last is None:
            return ""
        last_id = await asyncio.shield(self._last)
        if self.failed is not None:
            raise self.failed
        return last_id
