"""The job queue, on arq: the one module that knows arq's internals (arq is pinned to the
versions tested, in pyproject.toml).

arq's records of a job are ``arq:job:<id>`` (the serialized call), its place in ``arq:queue``
(a sorted set scored by when it may run) and, while a worker has it, ``arq:in-progress:<id>``.
tokenrelay writes them itself, in the round trips it already makes, and takes a job off the
queue with one Lua call instead of arq's WATCH/MULTI. A job's way, each step atomic:

    submit   status hash (queued) + arq's records [+ wake-up]         API     (one MULTI)
    take     in-progress (the taker's token) + lease [+ claim]         worker  (take.lua)
    claim    queued -> running, owner                                  worker  (split Redis)
    events   ... then ``end``, with the final status                   worker  (append.lua)
    finish   arq's records and the lease gone, only once ``end`` is stored
    reap     lease lapsed: running -> ``error`` + ``end``, then finish;
             queued -> the taker is voided and the job handed back     any process

``POST /v1/jobs`` sends the wake-up once its answer is written (``JobQueue.wake``).

So from the moment a job leaves the queue until its ``end`` is stored, it is leased: there is
no instant where it is neither queued nor leased, and a worker's death at any point is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import structlog
from arq.connections import ArqRedis, RedisSettings, create_pool, log_redis_info
from arq.constants import (
    default_queue_name,
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenrelay.keys import (
    JOB_FUNCTION,
    LEASES_KEY,
    METRICS_KEY,
    WAKE_CHANNEL,
    WORKERS_KEY,
    job_key,
    job_keys,
    rate_key,
)
from tokenrelay.metrics import WORKER_ALIVE_S
from tokenrelay.redis_url import is_sentinel
from tokenrelay.resilience import retrying
from tokenrelay.settings import Settings
from tokenrelay.store.connections import Streams, eval_many, is_cluster, script, sentinel_pool
from tokenrelay.store.jobs import Claim, add_job_records, parse_claim
from tokenrelay.wire import now_rfc3339

log = structlog.get_logger("tokenrelay.queue")

QUEUE_NAME = default_queue_name
_LUA = resources.files("tokenrelay.store") / "lua"
CLAIM_FN_LUA = (_LUA / "claim_fn.lua").read_text()
TAKE_LUA = CLAIM_FN_LUA + (_LUA / "take.lua").read_text()
REQUEUE_LUA = (_LUA / "requeue.lua").read_text()
READY_LUA = (_LUA / "ready.lua").read_text()
SWEEP_LUA = (_LUA / "sweep.lua").read_text()


NOT_TAKEN = (b"taken", b"gone", b"deferred")


CLOCK_SKEW_MS = 1000
"""How far apart the clocks of the hosts that enqueue and take may be: a job is due when its
score (its enqueue time, by the API's clock, rounded as arq rounds) is no later than the
taker's now plus this. tokenrelay never defers a job, so nothing is taken early by it."""


def now_ms() -> int:
    return int(time.time() * 1000)


# --- submit ---------------------------------------------------------------------------------


def add_enqueue(pipe: Any, job_id: str, *, wake: bool = True) -> None:
    """arq's records of the job, then (``wake``) the wake-up naming it (queue Redis).

    The records are exactly what ``ArqRedis.enqueue_job(JOB_FUNCTION, job_id, _job_id=job_id)``
    writes (without its three-round-trip guard against a reused id: ours are 128 random bits);
    the wake-up goes last, so a woken worker finds the job.
    """
    now = timestamp_ms()
    job = serialize_job(JOB_FUNCTION, (job_id,), {}, None, now)
    pipe.psetex(job_key_prefix + job_id, expires_extra_ms, job)
    pipe.zadd(QUEUE_NAME, {job_id: now})
    if wake:
        pipe.publish(WAKE_CHANNEL, job_id.encode())


# --- take, finish, reap ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Taken:
    """A job a worker took off the queue (and leased). ``claim`` is the claim made in the same
    call (a ``Claim``, or the status that bars the job), or None when the streams live on
    another Redis and the worker must claim it itself."""

    job_id: str
    owner: str
    claim: Claim | str | None


class JobQueue:
    """The queue Redis's side of a job's life: take, finish, hand back; and the leases."""

    def __init__(
        self, queue: Redis, streams: Streams, *, lease_ttl_s: float, in_progress_ttl_s: float
    ) -> None:
        self.redis = queue
        self.streams = streams
        # One Redis for both: the take claims the job in the same call.
        self.combined = streams is queue and not is_cluster(streams)
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.in_progress_ttl_ms = int(in_progress_ttl_s * 1000)
        self._take = script(queue, TAKE_LUA)
        self._requeue = script(queue, REQUEUE_LUA)
        self._ready = script(queue, READY_LUA)
        self._sweep = script(queue, SWEEP_LUA)
        self._sweep_from = 0

    async def submit(
        self,
        job_id: str,
        fields: Mapping[str, str],
        *,
        ttl_s: int,
        on_enqueue: Callable[[Any], None] | None = None,
        wake: bool = True,
    ) -> None:
        """Create the job's records and enqueue it: one atomic round trip when the queue and
        the streams share a Redis, else the records first, then the queue entry.

        ``wake=False`` leaves the workers' wake-up to the caller (``wake``): ``POST /v1/jobs``
        sends it once its answer is written, so a woken worker does not compete with the
        answer for the CPU. A wake-up that is never sent costs only a poll (``queue_poll_s``).

        ``on_enqueue(pipe)`` may add commands to the queue Redis's MULTI/EXEC that enqueues the
        job: they run atomically with the enqueue."""
        if self.combined:
            async with self.redis.pipeline(transaction=True) as pipe:
                add_job_records(pipe, job_id, dict(fields), ttl_s)
                add_enqueue(pipe, job_id, wake=wake)
                if on_enqueue is not None:
                    on_enqueue(pipe)
                await pipe.execute()
            return
        async with self.streams.pipeline(transaction=False) as pipe:
            add_job_records(pipe, job_id, dict(fields), ttl_s)
            await pipe.execute()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                add_enqueue(pipe, job_id, wake=wake)
                if on_enqueue is not None:
                    on_enqueue(pipe)
                await pipe.execute()
        except BaseException:
            # The submit failed (the caller answers an error): take the records back, so no
            # job sits "queued" that no queue holds. Best effort; they expire regardless.
            with contextlib.suppress(RedisError, OSError):
                await self.streams.delete(job_key(job_id))
            raise

    async def wake(self, job_id: str) -> None:
        """Wake the workers for a job ``submit(..., wake=False)`` enqueued (never raises: the
        workers' poll finds the job anyway)."""
        try:
            await self.redis.publish(WAKE_CHANNEL, job_id.encode())
        except (RedisError, OSError) as exc:
            log.warning("wake_failed", job_id=job_id, error=type(exc).__name__)

    @classmethod
    def for_settings(cls, queue: Redis, streams: Streams, settings: Settings) -> JobQueue:
        # The in-progress mark outlives any job: the lease, not it, tells a dead taker.
        return cls(
            queue,
            streams,
            lease_ttl_s=settings.lease_ttl_s,
            in_progress_ttl_s=settings.unfinished_ttl_s,
        )

    async def ready(self, limit: int) -> list[str]:
        """Up to ``limit`` jobs that may run now and no worker has, oldest first."""
        due = now_ms() + CLOCK_SKEW_MS
        ids = await self._ready(keys=[QUEUE_NAME], args=[due, limit, in_progress_key_prefix])
        return [raw.decode() for raw in ids]

    async def take(
        self, job_ids: Sequence[str], owners: Sequence[str], now: str, safety_ttl_s: int
    ) -> list[Taken]:
        """Take each job that is still free, in one round trip; returns those taken.

        With one Redis for queue and streams each take also claims its job. Idempotent per
        owner: after a lost reply, the same call again gives the same answer.
        """
        deadline = now_ms() + self.lease_ttl_ms
        calls = []
        for job_id, owner in zip(job_ids, owners, strict=True):
            keys = [QUEUE_NAME, in_progress_key_prefix + job_id, LEASES_KEY]
            due = now_ms() + CLOCK_SKEW_MS
            args: list[Any] = [job_id, due, deadline, self.in_progress_ttl_ms, owner]
            if self.combined:
                keys += job_keys(job_id)
                args += [now, safety_ttl_s]
            calls.append((keys, args))
        replies = await eval_many(self.redis, self._take, calls)
        taken = []
        for job_id, owner, reply in zip(job_ids, owners, replies, strict=True):
            if isinstance(reply, BaseException):
                raise reply
            if reply[0] == 0 and (not self.combined or reply[1] in NOT_TAKEN):
                continue  # another worker has it, it ended, or it is not due yet
            claim = parse_claim(reply) if self.combined else None
            taken.append(Taken(job_id, owner, claim))
        return taken

    async def finish(self, *job_ids: str) -> None:
        """Remove the jobs' arq records and leases: only once their ``end`` is stored."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for job_id in job_ids:
                pipe.zrem(QUEUE_NAME, job_id)
                pipe.delete(
                    job_key_prefix + job_id,
                    retry_key_prefix + job_id,
                    in_progress_key_prefix + job_id,
                )
                pipe.zrem(LEASES_KEY, job_id)
            await pipe.execute()

    async def lapsed(self, limit: int) -> list[tuple[str, str]]:
        """Jobs whose lease ran out, each with its taker's token ('' if none), oldest first."""
        raw = await self.redis.zrangebyscore(LEASES_KEY, "-inf", now_ms(), start=0, num=limit)
        if not raw:
            return []
        ids = [item.decode() for item in raw]
        owners = await self.redis.mget([in_progress_key_prefix + job_id for job_id in ids])
        return [(job_id, (o or b"").decode()) for job_id, o in zip(ids, owners, strict=True)]

    async def requeue(self, job_id: str, taker: str) -> bool:
        """Hand back a job whose taker died or stalled before claiming it (its lease lapsed),
        and wake the workers. False if it is no longer that taker's."""
        handed = await self._requeue(
            keys=[in_progress_key_prefix + job_id, LEASES_KEY], args=[job_id, now_ms(), taker]
        )
        if handed:
            await self.redis.publish(WAKE_CHANNEL, job_id.encode())
        return bool(handed)

    async def sweep(self, page: int = 500) -> int:
        """Lease every job marked in progress that has no lease (taken by something that never
        leased it: an arq worker of another version), so the reaper looks at it next. Walks
        the queue a page a call; returns how many it leased."""
        found, self._sweep_from = await self._sweep(
            keys=[QUEUE_NAME, LEASES_KEY],
            args=[self._sweep_from, page, now_ms(), in_progress_key_prefix],
        )
        return int(found)

    async def renew(
        self,
        job_ids: Sequence[str],
        slots: Mapping[str, Sequence[str]],
        *,
        redis: Redis | None = None,
    ) -> None:
        """Push the leases of ``job_ids`` a lease TTL ahead, and the members of each sorted set
        in ``slots`` (upstream concurrency slots) still there, in one round trip.

        Leases are set with a plain ZADD, not XX: a lease its holder still runs comes back
        even if a stale reaper or taker removed it, so a running job is never left without
        one (a lease of a job that already ended is harmless: the reaper only tidies it).
        ``redis``: a client of the queue Redis other than the shared one (its own connection).
        """
        deadline = now_ms() + self.lease_ttl_ms
        async with (redis or self.redis).pipeline(transaction=False) as pipe:
            pipe.zadd(LEASES_KEY, dict.fromkeys(job_ids, deadline))
            for key, members in slots.items():
                pipe.zadd(key, dict.fromkeys(members, deadline), xx=True)
            await pipe.execute()

    async def depth(self) -> int:
        return int(await self.redis.zcard(QUEUE_NAME))

    async def admission(self, tenant: str, *, count: bool) -> tuple[int, int]:
        """The queue's depth and, when ``count``, this minute's submits by ``tenant`` counting
        this one (else 0); one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(QUEUE_NAME)
            if count:
                rate = rate_key(tenant, int(time.time() // 60))
                pipe.incr(rate)
                pipe.expire(rate, 120)
            replies = await pipe.execute()
        return int(replies[0]), int(replies[1]) if count else 0

    async def snapshot(self) -> tuple[dict[bytes, bytes], int, int, int]:
        """For ``/metrics``: the shared metrics hash, queued jobs, leased (running) jobs, and
        workers alive, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(METRICS_KEY)
            pipe.zcard(QUEUE_NAME)
            pipe.zcard(LEASES_KEY)
            pipe.zcount(WORKERS_KEY, time.time() - WORKER_ALIVE_S, "+inf")
            raw, queued, running, workers = await pipe.execute()
        return raw, int(queued), int(running), int(workers)


# --- the worker -------------------------------------------------------------------------------


def new_owner(worker_id: str) -> str:
    """A token naming one take of one job by this worker process."""
    return f"{worker_id}:{secrets.token_hex(6)}"


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


class QueueWorker(Worker):
    """arq's Worker (signals, graceful shutdown, concurrency), taking jobs its own way.

    - A wake-up (pub/sub, naming the job) starts a job at once: arq's 0.5 s poll alone would
      add a quarter second to every time to first token. The poll stays as a safety net, at
      least every ``poll_delay``.
    - A job is taken, leased and (on one Redis) claimed in one Lua call, and handed to
      ``run``; ``run`` owns it from there to its finish and never raises but on cancel.
    """

    def __init__(self, run: Callable[[Taken], Coroutine[Any, Any, None]], **kwargs: Any) -> None:
        super().__init__(functions=[func(_never_called, name=JOB_FUNCTION)], **kwargs)
        self._run = run
        self.jobs: JobQueue | None = None
        self.worker_id = worker_id()
        self.safety_ttl_s = 0
        self.take_retry_s = 0.0
        self._work = asyncio.Event()
        self._hints: list[str] = []
        self._unsure: dict[str, str] = {}  # job -> owner of a take whose reply never came

    @classmethod
    def for_settings(
        cls,
        run: Callable[[Taken], Coroutine[Any, Any, None]],
        settings: Settings,
        *,
        on_startup: Callable[[dict[Any, Any]], Coroutine[Any, Any, None]],
        on_shutdown: Callable[[dict[Any, Any]], Coroutine[Any, Any, None]],
    ) -> QueueWorker:
        """The worker of ``settings``: signals handled, at most ``max_jobs_per_worker`` jobs."""
        if is_sentinel(settings.queue_dsn):
            # arq's RedisSettings cannot say redis+sentinel://: its pool is built here instead,
            # on the same Sentinel-backed connections the rest of tokenrelay uses.
            pool = sentinel_pool(settings.queue_dsn, socket_timeout=settings.redis_timeout_s)
            options: dict[str, Any] = {"redis_pool": ArqRedis(connection_pool=pool)}
        else:
            options = {"redis_settings": RedisSettings.from_dsn(settings.queue_dsn)}
        return cls(
            run,
            **options,
            on_startup=on_startup,
            on_shutdown=on_shutdown,
            max_jobs=settings.max_jobs_per_worker,
            # Our own deadline (job_timeout_s) ends the stream properly; arq's is a backstop.
            job_timeout=settings.job_timeout_s + 60,
            keep_result=0,
            poll_delay=settings.queue_poll_s,
            handle_signals=True,
            # SIGTERM: take no new jobs, let running ones finish for this long, then stop the
            # rest (their streams end with worker_lost rather than breaking off).
            job_completion_wait=math.ceil(settings.shutdown_grace_s),
        )

    def attach(self, jobs: JobQueue, *, safety_ttl_s: int, take_retry_s: float) -> None:
        self.jobs = jobs
        self.safety_ttl_s = safety_ttl_s
        self.take_retry_s = take_retry_s

    def wake(self, job_id: str | None = None) -> None:
        """A job was queued (``job_id``, when the wake-up named it) or a slot freed up."""
        if job_id is not None and len(self._hints) < self.max_jobs:
            self._hints.append(job_id)
        self._work.set()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._work.set()  # a slot is free: take the next queued job now

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                cast(RedisSettings, self.redis_settings), default_queue_name=self.queue_name
            )
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        loop = asyncio.get_running_loop()
        last_poll = 0.0
        delay = 0.05
        while True:
            self._work.clear()
            hints, self._hints = self._hints, []
            full = not hints or loop.time() - last_poll >= self.poll_delay_s
            try:
                await self._take_jobs(hints, full)
                if full:
                    last_poll = loop.time()
                delay = 0.05
            except (RedisError, OSError) as exc:
                # Redis restarting or unreachable: keep the running jobs, retry the queue.
                log.warning("queue_poll_failed", error=type(exc).__name__, delay_s=delay)
                self._hints = hints + self._hints
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if not self._work.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), self.poll_delay_s)

    async def _take_jobs(self, hints: list[str], full: bool) -> None:
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
        if self.jobs is None or not self.allow_pick_jobs:
            return
        free = self.max_jobs - self.job_counter
        if free <= 0:
            return
        # Takes whose outcome is unknown (Redis failed past the retry budget) come first, with
        # the same owners: if Redis did take them, the same take again is the same answer.
        candidates = list(dict.fromkeys([*self._unsure, *hints]))
        if full:
            candidates += [j for j in await self.jobs.ready(free) if j not in candidates]
        candidates = [j for j in candidates if j not in self.tasks][:free]
        if not candidates:
            return
        for job_id in candidates:
            self._unsure.setdefault(job_id, new_owner(self.worker_id))
        owners = [self._unsure[job_id] for job_id in candidates]
        jobs = self.jobs
        took = await retrying(
            lambda: jobs.take(candidates, owners, now_rfc3339(), self.safety_ttl_s),
            budget_s=self.take_retry_s,
            what="take",
        )
        for job_id in candidates:
            del self._unsure[job_id]
        for taken in took:
            await self.sem.acquire()  # never waits: job_counter < max_jobs
            self.job_counter += 1
            task = asyncio.create_task(self._job(taken), name=f"job-{taken.job_id}")
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[taken.job_id] = task
        await self.record_health()

    async def _job(self, taken: Taken) -> None:
        try:
            await self._run(taken)
        except asyncio.CancelledError:
            # Stopped past the shutdown grace (``run`` ended the stream if it could). The task
            # ends here: arq's close() gathers the job tasks and would fail on the error.
            log.info("job_stopped", job_id=taken.job_id)
        except Exception as exc:  # a bug: ``run`` must settle every error itself
            log.error("job_run_failed", job_id=taken.job_id, error=type(exc).__name__, exc_info=exc)


async def _never_called(ctx: dict[str, Any], job_id: str) -> None:
    """arq wants a function per job name; ``QueueWorker`` runs jobs itself."""
    raise RuntimeError("QueueWorker runs jobs itself")
