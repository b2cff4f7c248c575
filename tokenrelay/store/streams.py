"""Durable Streams on Redis: a stream's state hash, its entries (a Redis stream read like a
job's events) and its idempotent producers, each write one Lua call (``lua/stream_*.lua``).

An entry is ``t=m`` (a message, ``d`` its bytes; ``t=n`` for the next messages of one JSON
batch) or ``t=c`` (the stream was closed: a wake-up for live readers, never data). A fork
holds a copy of its source's messages up to its fork point, with their ids. The tail is the
id of the last message, kept in the hash, so offsets are entry ids: they sort, and never
repeat (Redis ids only grow).

With durability ``replicated`` no reader sees a message before a replica holds it: a write's
messages and close are staged (``lua/stream_stage.lua``), one ``WAIT 1`` follows on the same
connection, and only then are they published (``lua/stream_publish.lua``) with the ids they
were staged under; the writer's answer waits for a replica to hold the publish too. A
failover can lose a publish readers saw, never the staging behind it: the stream's next write
publishes it again, same ids, same data.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, cast

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from tokenrelay.errors import StoreUnavailable, StreamGone
from tokenrelay.keys import durable_keys
from tokenrelay.store.connections import Streams, script
from tokenrelay.store.replication import NodeClients, run_then_wait, unacknowledged, wait_command
from tokenrelay.wire import EventId

_LUA = resources.files("tokenrelay.store") / "lua"
_EXPIRY = (_LUA / "stream_expiry.lua").read_text()
_STAGE = (_LUA / "stream_stage.lua").read_text()
CREATE_LUA = _EXPIRY + _STAGE + (_LUA / "stream_create.lua").read_text()
APPEND_LUA = _EXPIRY + _STAGE + (_LUA / "stream_append.lua").read_text()
PUBLISH_LUA = _EXPIRY + (_LUA / "stream_publish.lua").read_text()
TOUCH_LUA = (_LUA / "stream_touch.lua").read_text()
READ_LUA = _EXPIRY + (_LUA / "stream_read.lua").read_text()
DELETE_LUA = (_LUA / "stream_delete.lua").read_text()
RELEASE_LUA = (_LUA / "stream_release.lua").read_text()
FORK_LUA = _EXPIRY + _STAGE + (_LUA / "stream_fork.lua").read_text()
SETTLE_PAUSE_S = 0.1

MESSAGE = "m"
MORE = "n"  # a further message of the same request (a JSON batch)
MESSAGES = (MESSAGE, MORE)
CLOSED = "c"
PAGE = 1000
_KINDS = {kind.encode(): kind for kind in (MESSAGE, MORE, CLOSED)}

CreateStatus = Literal["created", "exists", "conflict"]
DeleteStatus = Literal["missing", "gone", "kept", "deleted"]
AppendStatus = Literal[
    "ok", "missing", "gone", "closed", "dup_closed", "ct", "seq", "stale", "epoch_seq", "gap", "dup"
]


@dataclass(frozen=True, slots=True)
class Entry:
    id: EventId
    type: str  # MESSAGE or CLOSED (or, on a job's stream, the event type)
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamState:
    """What HEAD shows of a stream."""

    content_type: str
    tail: EventId
    closed: bool
    ttl: str | None
    expires_at: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's state and its entries after some id, read at one instant."""

    content_type: str
    tail: EventId
    closed: bool
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class Producer:
    id: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class Appended:
    status: AppendStatus
    tail: EventId
    detail: str  # the current epoch (stale), the last seq (dup, gap, dup_closed)


@dataclass(frozen=True, slots=True)
class ForkSpec:
    """A fork to create: its configuration, where it forks, and the source's messages it holds
    (the copies, with their ids; a sub-offset's part of a message included)."""

    content_type: str
    normalized: str
    ttl: str
    expires_at: str
    expires_ms: str
    closed: bool
    source: str  # the source's topic
    forked_from: str  # Stream-Forked-From, as sent
    given_offset: str  # Stream-Fork-Offset as an offset, '' when defaulted
    offset: str  # the fork offset, resolved
    sub_offset: str
    tail: EventId
    copied: list[Entry]


def _entry_id(raw: bytes) -> EventId:
    """An id as Redis wrote it (``<ms>-<seq>``): split, not matched, on the read path."""
    ms, _, seq = raw.partition(b"-")
    return EventId((int(ms), int(seq)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DurableStreamStore:
    """The doors to Durable Streams' keys; a stream is named by its topic
    (``keys.durable_topic``) and belongs to ``owner``: to anyone else it does not exist."""

    def __init__(
        self,
        redis: Streams,
        *,
        retention_s: int,
        replicated: bool = False,
        replica_wait_s: float = 1.0,
        write_retry_s: float = 30.0,
    ) -> None:
        self.redis = redis
        self.retention_ms = retention_s * 1000
        self.replicated = replicated
        self.wait_ms = max(1, int(replica_wait_s * 1000))
        self.retry_s = write_retry_s
        self._nodes = NodeClients(redis)
        self._publish = script(redis, PUBLISH_LUA)
        self._touch = script(redis, TOUCH_LUA)
        self._create = script(redis, CREATE_LUA)
        self._append = script(redis, APPEND_LUA)
        self._read = script(redis, READ_LUA)
        self._delete = script(redis, DELETE_LUA)
        self._release = script(redis, RELEASE_LUA)
        self._fork = script(redis, FORK_LUA)

    async def create(
        self,
        topic: str,
        owner: str,
        *,
        content_type: str,
        normalized: str,
        ttl: str,
        expires_at: str,
        expires_ms: str,
        closed: bool,
        messages: Sequence[bytes],
    ) -> tuple[CreateStatus, EventId, bool]:
        """Create the stream, or compare with the one there: (status, tail, closed)."""
        args: list[Any] = [owner, content_type, normalized, ttl, expires_at, expires_ms]
        token = self._token()
        args += ["1" if closed else "0", self.retention_ms, token, *messages]
        reply, acked = await self._write(self._create, topic, args)
        status, tail, is_closed = (_text(v) for v in reply[:3])
        kept = status != "conflict"
        await self._settle(topic, reply, acked, kept, token, closed=kept and is_closed == "1")
        return status, EventId.parse(tail), is_closed == "1"  # type: ignore[return-value]

    async def append(
        self,
        topic: str,
        owner: str,
        *,
        normalized: str,
        close: bool,
        seq: str,
        producer: Producer | None,
        messages: Sequence[bytes],
    ) -> Appended:
        """Append ``messages`` (none: only close), checked as the protocol orders: closed,
        content type, producer, ``Stream-Seq``. Atomic, so a producer's requests serialize."""
        pid, epoch, pseq = (
            ("", "", "")
            if producer is None
            else (
                producer.id,
                str(producer.epoch),
                str(producer.seq),
            )
        )
        args: list[Any] = [owner, normalized, "1" if close else "0", seq, pid, epoch, pseq]
        token = self._token()
        args += [self.retention_ms, token, *messages]
        reply, acked = await self._write(self._append, topic, args)
        status, tail, detail = (_text(v) for v in reply[:3])
        dup = status in ("dup", "dup_closed")
        await self._settle(
            topic,
            reply,
            acked,
            status == "ok" or dup,
            token,
            closed=(status == "ok" and close) or status == "dup_closed",
            producer=producer if dup else None,
        )
        return Appended(status, EventId.parse(tail) if tail else EventId((0, 0)), detail)  # type: ignore[arg-type]

    def _token(self) -> str:
        """Durability ``replicated``: the token a write's staged entries carry, by which its
        publish knows them still there ('' when not staged)."""
        return secrets.token_hex(8) if self.replicated else ""

    async def _write(self, lua: AsyncScript, topic: str, args: list[Any]) -> tuple[Any, Any]:
        """Run a write script; staged (``replicated``), on the key's node with a WAIT after it
        on the same connection: (its reply, the WAIT's; None when not staged)."""
        keys = durable_keys(topic)
        if not self.replicated:
            return await lua(keys=keys, args=args), None
        _, client = self._nodes.of(keys[0])
        try:
            reply, acked = await run_then_wait(
                client, lua, [(keys, args)], wait_command(self.wait_ms)
            )
        except (RedisError, OSError):
            await self._nodes.refresh()
            raise
        if isinstance(reply, BaseException):
            raise reply
        return reply, acked

    async def _settle(
        self,
        topic: str,
        reply: list[Any],
        acked: Any,
        wrote: bool,
        token: str,
        *,
        closed: bool,
        producer: Producer | None = None,
    ) -> None:
        """Durability ``replicated``, after a write script's ``reply``: when it ``wrote`` (or
        earlier writes wait to be published), once a replica holds what was staged up to the
        reply's last staged id (``acked``, the staging's WAIT reply; else a write and a WAIT
        again), publish it, then wait for a replica to hold the publish. Tried again for
        ``retry_s`` (a failover, a replica behind); raises ``StoreUnavailable`` past that, or
        at once when the write is gone (its entries under ``token``, its ``closed``, its
        ``producer``'s state): then it was lost, and is to be made again."""
        if len(reply) < 6:  # not staged
            return
        upto, mine, pending = (_text(v) for v in reply[3:6])
        if not wrote and pending != "1":
            return
        check = [
            "1" if wrote and closed else "0",
            token if wrote and mine == "1" else "",
            *(("", "", "") if producer is None else (producer.id, producer.epoch, producer.seq)),
        ]
        keys = durable_keys(topic)
        wait = wait_command(self.wait_ms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_s
        held = unacknowledged(acked, self.wait_ms) is None
        error: Exception | None = None
        while True:
            try:
                _, client = self._nodes.of(keys[0])
                if not held:
                    _, acked = await run_then_wait(client, self._touch, [(keys[:1], [])], wait)
                    held = (error := unacknowledged(acked, self.wait_ms)) is None
                if held:
                    args = [upto or "0-0", self.retention_ms, *check]
                    reply, acked = await run_then_wait(client, self._publish, [(keys, args)], wait)
                    if isinstance(reply, BaseException):
                        raise reply
                    if _text(reply[0]) == "lost":
                        raise StoreUnavailable("the write was lost in a failover: send it again")
                    if (error := unacknowledged(acked, self.wait_ms)) is None:
                        return
            except (RedisError, OSError) as exc:
                error, held = exc, False
                await self._nodes.refresh()
            if loop.time() >= deadline:
                raise StoreUnavailable("no replica acknowledged the write") from error
            await asyncio.sleep(SETTLE_PAUSE_S)

    async def aclose(self) -> None:
        await self._nodes.aclose()

    async def read(
        self, topic: str, owner: str, after: EventId | None, count: int
    ) -> Snapshot | None:
        """Up to ``count`` entries after ``after`` (None: none, the state only) with the
        stream's state; None if missing. Resets a sliding TTL."""
        start = "" if after is None else str(after)
        reply = await self._read(keys=durable_keys(topic), args=[owner, start, count])
        if not reply:
            return None
        if len(reply) == 1:
            raise StreamGone
        ct, tail, closed, raw = reply
        entries = [
            Entry(_entry_id(eid), _KINDS.get(fields[1]) or _text(fields[1]), fields[3])
            for eid, fields in raw
        ]
        return Snapshot(_text(ct), EventId.parse(_text(tail)), _text(closed) == "1", entries)

    async def fields(self, topic: str, owner: str) -> dict[str, str] | None:
        """The stream's state hash without touching its TTL; None if missing. Raises
        ``StreamGone`` for one deleted but kept for its forks."""
        raw = await cast(
            "Awaitable[dict[bytes, bytes]]", self.redis.hgetall(durable_keys(topic)[0])
        )
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if fields.get("owner") != owner:
            return None
        if "gone" in fields:
            raise StreamGone
        return fields

    async def head(self, topic: str, owner: str) -> StreamState | None:
        """The stream's state without touching its TTL; None if missing."""
        fields = await self.fields(topic, owner)
        if fields is None:
            return None
        return StreamState(
            fields["ct"],
            EventId.parse(fields["tail"]),
            fields.get("closed") == "1",
            fields.get("ttl"),
            fields.get("exp"),
        )

    async def delete(self, topic: str, owner: str) -> DeleteStatus:
        """Delete the stream, or mark it gone while forks of it remain ("kept"); a deleted
        fork releases its source, which goes too if it was gone and this its last fork."""
        forks = durable_keys(topic)[3]
        for fork in await cast("Awaitable[set[bytes]]", self.redis.smembers(forks)):
            if not await self.redis.exists(durable_keys(_text(fork))[0]):  # expired
                await cast("Awaitable[int]", self.redis.srem(forks, fork))
        status, source = await self._delete(keys=durable_keys(topic), args=[owner])
        released, source = topic, _text(source)
        while status == 1 and source:
            released, source = (
                source,
                _text(await self._release(keys=durable_keys(source), args=[released])),
            )
        return ("missing", "deleted", "kept", "gone")[int(status)]  # -1: the last

    async def messages(
        self, topic: str, after: EventId, upto: EventId | None, count: int
    ) -> list[Entry]:
        """Up to ``count`` message entries after ``after`` (up to ``upto`` included)."""
        end = "+" if upto is None else str(upto)
        raw = await self.redis.xrange(durable_keys(topic)[1], f"({after}", end, count=count)
        entries = [Entry(_entry_id(i), _text(f[b"t"]), f[b"d"]) for i, f in raw]
        return [e for e in entries if e.type in MESSAGES]

    async def fork(
        self, topic: str, owner: str, spec: ForkSpec, messages: Sequence[bytes]
    ) -> tuple[CreateStatus, EventId, bool]:
        """Create the fork ``spec`` describes, then append ``messages``, and record it with its
        source; or compare with the stream there: (status, tail, closed)."""
        args: list[Any] = [owner, spec.content_type, spec.normalized, spec.ttl, spec.expires_at]
        args += [spec.expires_ms, "1" if spec.closed else "0", self.retention_ms, spec.source]
        args += [spec.forked_from, spec.given_offset, spec.offset, spec.sub_offset]
        token = self._token()
        args += [str(spec.tail), len(spec.copied), token]
        for entry in spec.copied:
            args += [str(entry.id), entry.type, entry.data]
        reply, acked = await self._write(self._fork, topic, [*args, *messages])
        status, tail, closed = (_text(v) for v in reply[:3])
        kept = status != "conflict"
        await self._settle(topic, reply, acked, kept, token, closed=kept and closed == "1")
        # Recorded with its source (again when it "exists": a first try may have failed after
        # creating it), while the source is there.
        source = durable_keys(spec.source)
        ttl = await self.redis.pttl(source[0]) if kept else -2
        if ttl != -2:
            await cast("Awaitable[int]", self.redis.sadd(source[3], topic))
            if ttl > 0:
                await self.redis.pexpire(source[3], ttl)
        return status, EventId.parse(tail), closed == "1"  # type: ignore[return-value]
