"""The job records: a job's status hash and text on the streams Redis, read, claimed and
ended atomically (Lua), and the records a submit writes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from tokenrelay.errors import JobNotFound
from tokenrelay.keys import (
    RECENT_JOBS_KEPT,
    job_key,
    job_keys,
    pending_key,
    recent_jobs_key,
    text_key,
)
from tokenrelay.settings import Settings
from tokenrelay.store.connections import Streams, script
from tokenrelay.store.replication import NodeClients, write_then_wait
from tokenrelay.wire import now_rfc3339

_LUA = resources.files("tokenrelay.store") / "lua"
CLAIM_LUA = (_LUA / "claim_fn.lua").read_text() + (
    "\nreturn claim(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"
)
FAIL_LUA = (_LUA / "publish_fn.lua").read_text() + (_LUA / "fail.lua").read_text()
FINISH_QUEUED_LUA = (_LUA / "finish_queued.lua").read_text()
READ_JOB_LUA = (_LUA / "read_job.lua").read_text()
# Durability ``replicated``: an end is staged, waits for a replica, then is published.
_NEXT_ID = (_LUA / "staged_next_id.lua").read_text()
FAIL_STAGE_LUA = _NEXT_ID + (_LUA / "fail_stage.lua").read_text()
CANCEL_STAGE_LUA = _NEXT_ID + (_LUA / "cancel_stage.lua").read_text()
END_STAGED_LUA = (_LUA / "publish_fn.lua").read_text() + (_LUA / "end_staged.lua").read_text()
STAGED = 3
"""A staging script's reply: the end is staged, to be published once a replica holds it."""


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


SUMMARY_FIELDS = (
    "id",
    "status",
    "upstream",
    "model",
    "created_at",
    "finished_at",
    "finish_reason",
    "last_event_id",
    "tenant",
)

Position = tuple[int, bytes | None]
"""Where a page ends: jobs strictly older than (score, id); id None means all of that ms too."""


def add_job_records(pipe: Any, job_id: str, fields: dict[str, str], ttl_s: int) -> None:
    """The job's status hash and its place in the tenant's recent jobs (streams Redis)."""
    now = int(time.time() * 1000)
    pipe.hset(job_key(job_id), mapping=fields)
    pipe.expire(job_key(job_id), ttl_s)
    recent = recent_jobs_key(fields["tenant"])
    pipe.zadd(recent, {job_id: now})
    pipe.zremrangebyrank(recent, 0, -RECENT_JOBS_KEPT - 1)
    pipe.expire(recent, ttl_s)


class JobStore:
    """A job's record (its status hash) and text on the streams Redis (one node or a cluster):
    read, claimed, ended. Clients must not decode responses."""

    def __init__(
        self,
        redis: Streams,
        *,
        ttl_s: int,
        maxlen: int,
        replicated: bool = False,
        replica_wait_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.maxlen = maxlen
        self._claim = script(redis, CLAIM_LUA)
        self._read_job = script(redis, READ_JOB_LUA)
        # The two ways a job ends but through its worker's writer: failed (by the reaper, or
        # by its worker when its writes failed) and cancelled while queued. With durability
        # ``replicated`` each is staged, waits for a replica, and only then is published.
        self.replicated = replicated
        self.wait_ms = max(1, int(replica_wait_s * 1000))
        if replicated:
            self._nodes = NodeClients(redis)
            self._fail = script(redis, FAIL_STAGE_LUA)
            self._finish_queued = script(redis, CANCEL_STAGE_LUA)
            self._end_staged = script(redis, END_STAGED_LUA)
        else:
            self._fail = script(redis, FAIL_LUA)
            self._finish_queued = script(redis, FINISH_QUEUED_LUA)

    @classmethod
    def for_settings(cls, redis: Streams, settings: Settings) -> JobStore:
        return cls(
            redis,
            ttl_s=settings.stream_ttl_s,
            maxlen=settings.stream_maxlen,
            replicated=settings.durability == "replicated",
            replica_wait_s=settings.replica_wait_s,
        )

    async def aclose(self) -> None:
        if self.replicated:
            await self._nodes.aclose()

    async def get_job(self, job_id: str) -> tuple[dict[str, str], str] | None:
        """The status hash and text of a job, read together (atomically); None if unknown."""
        raw, text = await self._read_job(keys=[job_key(job_id), text_key(job_id)])
        if not raw:
            return None
        fields = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
        return fields, (text or b"").decode()

    async def job_fields(self, job_id: str, *names: str) -> list[str | None]:
        values = await cast(
            "Awaitable[list[bytes | None]]", self.redis.hmget(job_key(job_id), list(names))
        )
        return [None if value is None else value.decode() for value in values]

    async def job_field(self, job_id: str, name: str) -> str | None:
        value = await cast("Awaitable[bytes | None]", self.redis.hget(job_key(job_id), name))
        return None if value is None else value.decode()

    async def claim(self, job_id: str, owner: str, now: str, *, safety_ttl_s: int) -> Claim | str:
        """Take a queued job for ``owner`` (idempotent for it), or return the status that bars
        it (``missing`` if gone, ``void`` if a reaper handed the job back meanwhile)."""
        reply = await self._claim(keys=list(job_keys(job_id)), args=[owner, now, safety_ttl_s])
        return parse_claim(reply)

    async def fail(
        self, job_id: str, error: Mapping[str, Any], *, owner: str = "", void: str = ""
    ) -> int:
        """End a running job with ``error`` and ``end`` ``error``, atomically (fail.lua): the
        reaper's (``owner`` '': whoever holds it) or its worker's own. 1 when ended, 2 when
        still queued (``void`` can no longer claim it), 0 when there is nothing to do. With
        durability ``replicated`` it returns once a replica holds the end (``_staged``)."""
        args: list[str | int | bytes] = [
            owner,
            now_rfc3339(),
            self.ttl_s,
            orjson.dumps(dict(error)),
            orjson.dumps({"finish_reason": "error"}),
            self.maxlen,
            void,
            job_id,
        ]
        if self.replicated:
            return await self._staged(job_id, args)
        return int(await self._fail(keys=list(job_keys(job_id)), args=args))

    async def finish_queued(self, job_id: str, now: str, end_data: Mapping[str, Any]) -> bool:
        """End a job no worker has taken, with one ``end`` event. False if a worker has it."""
        if self.replicated:
            args: list[str | int | bytes] = [now, self.ttl_s, orjson.dumps(dict(end_data))]
            return await self._staged(job_id, args, cancel=True) == 1
        done = await self._finish_queued(
            keys=list(job_keys(job_id)),
            args=[now, self.ttl_s, orjson.dumps(dict(end_data)), self.maxlen],
        )
        return bool(done)

    async def _staged(
        self, job_id: str, args: Sequence[str | int | bytes], *, cancel: bool = False
    ) -> int:
        """Durability ``replicated``: stage the end (``fail_stage.lua`` or, ``cancel``,
        ``cancel_stage.lua``), wait for a replica, publish it (``end_staged.lua``), wait again,
        so the end is on a replica before the caller lets the job go. Raises a transient
        ``NOREPLICAS`` when a replica does not acknowledge: called again, each step is applied
        once, and what was staged is published."""
        keys = [*job_keys(job_id), pending_key(job_id)]
        _, client = self._nodes.of(job_key(job_id))
        stage = self._finish_queued if cancel else self._fail
        try:
            # A reply the caller acts on (it lets the job go, or answers that it ended) must
            # rest on what a replica holds; the scripts write with each, so WAIT covers it.
            # A cancel's 0 (a worker has the job) needs none: the worker is signalled.
            wrote = (1, 3) if cancel else (0, 1, 2, 3)
            done = await write_then_wait(client, stage, keys, args, self.wait_ms, wrote=wrote)
            if done != STAGED:
                return int(done)
            publish = self._end_staged
            ended = await write_then_wait(
                client, publish, keys, [self.maxlen], self.wait_ms, wrote=(1,)
            )
            return int(ended)
        except (RedisError, OSError):
            await self._nodes.refresh()
            raise

    # -- reading ---------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise unless the streams Redis answers."""
        await self.redis.ping()

    async def cancel(self, job_id: str, now: str) -> bool:
        """Cancel a job: a queued one ends at once with ``end`` ``cancelled`` (True); a running
        one is flagged ``cancel_requested`` for its worker (False: signal the workers too)."""
        if await self.finish_queued(job_id, now, {"finish_reason": "cancelled"}):
            return True
        await cast("Awaitable[int]", self.redis.hset(job_key(job_id), "cancel_requested", "1"))
        return False

    async def delete(self, job_id: str) -> bool:
        """Forget an ended job: its record, text and events (one slot, one command). True if
        it was there. The caller makes sure it has ended: a worker would write on."""
        return bool(await cast("Awaitable[int]", self.redis.delete(*job_keys(job_id))))

    async def require_job(self, job_id: str) -> dict[str, str]:
        raw = await cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(job_key(job_id)))
        if not raw:
            raise JobNotFound(job_id)
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def recent(
        self, tenant: str, position: Position | None, limit: int
    ) -> tuple[list[tuple[dict[str, str], int]], bool]:
        """Up to ``limit`` live jobs older than ``position`` and whether more remain.

        Reads the index a slice at a time and each slice's status hashes in one pipeline; a slice
        comes up short only when jobs in it expired, which the index then forgets.
        """
        key = recent_jobs_key(tenant)
        rows: list[tuple[dict[str, str], int]] = []
        while True:
            want = limit + 1 - len(rows)  # one more than asked: tells whether there is more
            slice_ = await _index_slice(self.redis, key, position, want)
            if not slice_:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in slice_:
                    pipe.hmget(job_key(job_id.decode()), list(SUMMARY_FIELDS))
                hashes: list[list[bytes | None]] = await pipe.execute()
            gone: list[bytes] = []
            for (job_id, score), values in zip(slice_, hashes, strict=True):
                fields = {n: v.decode() for n, v in zip(SUMMARY_FIELDS, values, strict=True) if v}
                fields["id"] = job_id.decode()
                if "status" not in fields:
                    gone.append(job_id)  # expired: the index outlives the job's keys
                elif secrets.compare_digest(fields.get("tenant", ""), tenant):
                    rows.append((fields, score))
            if gone:
                await self.redis.zrem(key, *gone)
            if len(rows) > limit or len(slice_) < want:
                break
            position = (slice_[-1][1], slice_[-1][0])
        return rows[:limit], len(rows) > limit


async def _index_slice(
    redis: Streams, key: str, position: Position | None, count: int
) -> list[tuple[bytes, int]]:
    """Up to ``count`` (id, score) of the index strictly after ``position``, newest first."""
    if position is None:
        entries = await redis.zrevrangebyscore(key, "+inf", "-inf", 0, count, withscores=True)
        return _scored(entries)
    score, after_id = position
    if after_id is None:
        entries = await redis.zrevrangebyscore(key, f"({score}", "-inf", 0, count, withscores=True)
        return _scored(entries)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(key, score, score)  # the same millisecond: few, read them all
        pipe.zrevrangebyscore(key, f"({score}", "-inf", 0, count, withscores=True)
        same_ms, older = await pipe.execute()
    ties = sorted((m for m in same_ms if m < after_id), reverse=True)
    return ([(m, score) for m in ties] + _scored(older))[:count]


def _scored(entries: Sequence[tuple[bytes, float]]) -> list[tuple[bytes, int]]:
    return [(member, int(score)) for member, score in entries]
