"""The job queue: arq's records, written in the same round trip as the job's status hash.

``arq``'s ``enqueue_job`` costs three round trips (WATCH, EXISTS, MULTI/EXEC) to guard against
a reused job id; tokenrelay's ids are fresh 128-bit random values, so the guard buys nothing.
Writing arq's two records (the serialized job and its queue entry) ourselves lets a submit be
one atomic MULTI/EXEC: status hash, queue entry and wake-up, all or nothing, when the queue and
the streams share a Redis; otherwise two round trips, the job's records first.
"""

from __future__ import annotations

from typing import Any

from arq.constants import default_queue_name, expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from tokenrelay.events import (
    JOB_FUNCTION,
    RECENT_JOBS_KEPT,
    WAKE_CHANNEL,
    job_key,
    recent_jobs_key,
)

QUEUE_NAME = default_queue_name


def add_job_records(pipe: Any, job_id: str, fields: dict[str, str], ttl_s: int) -> None:
    """The job's status hash and its place in the tenant's recent jobs (streams Redis)."""
    now = timestamp_ms()
    pipe.hset(job_key(job_id), mapping=fields)
    pipe.expire(job_key(job_id), ttl_s)
    recent = recent_jobs_key(fields["tenant"])
    pipe.zadd(recent, {job_id: now})
    pipe.zremrangebyrank(recent, 0, -RECENT_JOBS_KEPT - 1)
    pipe.expire(recent, ttl_s)


def add_enqueue(pipe: Any, job_id: str) -> None:
    """arq's records of the job, then the wake-up (queue Redis).

    The records are exactly what ``ArqRedis.enqueue_job(JOB_FUNCTION, job_id, _job_id=job_id)``
    writes; the wake-up goes last, so a woken worker finds the job.
    """
    now = timestamp_ms()
    job = serialize_job(JOB_FUNCTION, (job_id,), {}, None, now)
    pipe.psetex(job_key_prefix + job_id, expires_extra_ms, job)
    pipe.zadd(QUEUE_NAME, {job_id: now})
    pipe.publish(WAKE_CHANNEL, b"1")
