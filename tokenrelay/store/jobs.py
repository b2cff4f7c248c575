"""The job records: a job's status hash and text on the streams Redis, read, claimed and
ended atomically (Lua), and the records a submit writes."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
from arq.utils import timestamp_ms

from tokenrelay.errors import JobNotFound
from tokenrelay.keys import RECENT_JOBS_KEPT, job_key, job_keys, recent_jobs_key, text_key
from tokenrelay.settings import Settings
from tokenrelay.store.connections import Streams, script
from tokenrelay.wire import now_rfc3339

_LUA = resources.files("tokenrelay.store") / "lua"
CLAIM_LUA = (_LUA / "claim_fn.lua").read_text() + (
    "\nreturn claim(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"
)
FAIL_LUA = (_LUA / "fail.lua").read_text()
FINISH_QUEUED_LUA = (_LUA / "finish_queued.lua").read_text()
READ_JOB_LUA = (_LUA / "read_job.lua").read_text()


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


def add_job_records(pipe: Any, job_id: str, fields: dict[str, str], ttl_s: int) -> None:
    """The job's status hash and its place in the tenant's recent jobs (streams Redis)."""
    now = timestamp_ms()
    pipe.hset(job_key(job_id), mapping=fields)
    pipe.expire(job_key(job_id), ttl_s)
    recent = recent_jobs_key(fields["tenant"])
    pipe.zadd(recent, {job_id: now})
    pipe.zremrangebyrank(recent, 0, -RECENT_JOBS_KEPT - 1)
    pipe.expire(recent, ttl_s)


class JobStore:
    """A job's record (its status hash) and text on the streams Redis (one node or a cluster):
    read, claimed, ended. Clients must not decode responses."""

    def __init__(self, redis: Streams, *, ttl_s: int, maxlen: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.maxlen = maxlen
        self._claim = script(redis, CLAIM_LUA)
        self._fail = script(redis, FAIL_LUA)
        self._finish_queued = script(redis, FINISH_QUEUED_LUA)
        self._read_job = script(redis, READ_JOB_LUA)

    @classmethod
    def for_settings(cls, redis: Streams, settings: Settings) -> JobStore:
        return cls(redis, ttl_s=settings.stream_ttl_s, maxlen=settings.stream_maxlen)

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
        still queued (``void`` can no longer claim it), 0 when there is nothing to do."""
        data = orjson.dumps(dict(error))
        done = await self._fail(
            keys=list(job_keys(job_id)),
            args=[
                owner,
                now_rfc3339(),
                self.ttl_s,
                data,
                orjson.dumps({"finish_reason": "error"}),
                self.maxlen,
                void,
                job_id,
            ],
        )
        return int(done)

    async def finish_queued(self, job_id: str, now: str, end_data: Mapping[str, Any]) -> bool:
        """End a job no worker has taken, with one ``end`` event. False if a worker has it."""
        done = await self._finish_queued(
            keys=list(job_keys(job_id)),
            args=[now, self.ttl_s, orjson.dumps(dict(end_data)), self.maxlen],
        )
        return bool(done)

    # -- reading ---------------------------------------------------------------------------

    async def require_job(self, job_id: str) -> dict[str, str]:
        raw = await cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(job_key(job_id)))
        if not raw:
            raise JobNotFound(job_id)
        return {k.decode(): v.decode() for k, v in raw.items()}
