"""Every Redis key and pub/sub channel tokenrelay uses, named here and nowhere else (as arq
keeps its own in ``arq.constants``, whose names ``tokenrelay.store.queue`` re-exports)."""

from __future__ import annotations

import hashlib
import zlib

# --- Redis keys -------------------------------------------------------------------------------
# All keys of one job share one hash tag, so a job lives in one Redis Cluster slot. The tag is
# the job's shard, not its id: a cluster refuses a multi-key command across slots even on one
# node, so an API process follows every job of a shard with one XREAD, and needs at most
# SHARDS blocking readers however many jobs it follows.

SHARDS = 128
KEY_PREFIX = "tr"


def shard_of(job_id: str) -> int:
    return zlib.crc32(job_id.encode()) % SHARDS


def shard_tag(shard: int) -> str:
    """A key in the shard's slot (to ask a cluster which node holds the shard)."""
    return f"{KEY_PREFIX}:{{s{shard}}}"


def _job_prefix(job_id: str) -> str:
    return f"{shard_tag(shard_of(job_id))}:{job_id}"


def events_key(job_id: str) -> str:
    """The job's event stream."""
    return f"{_job_prefix(job_id)}:events"


def job_key(job_id: str) -> str:
    """The job's status hash."""
    return f"{_job_prefix(job_id)}:job"


def text_key(job_id: str) -> str:
    """The job's text so far (a string grown with APPEND)."""
    return f"{_job_prefix(job_id)}:text"


def pending_key(job_id: str) -> str:
    """The job's staged events, not yet published (durability ``replicated``): a stream named
    as the events' with ``:pending`` for ``:events`` (fail.lua derives it so)."""
    return f"{_job_prefix(job_id)}:pending"


def job_of(key: str) -> str:
    """The job id in one of its keys (``tr:{s<n>}:<job_id>:<kind>``)."""
    return key.split(":")[2]


def job_keys(job_id: str) -> tuple[str, str, str]:
    """The three keys of a job, in the order the Lua scripts take them."""
    return events_key(job_id), job_key(job_id), text_key(job_id)


def durable_topic(name: str) -> str:
    """The topic of a Durable Stream (``api.compat.durable``): a job-like id, no colon, so
    its keys live in one shard's slot and the hub follows it as it follows a job's events."""
    return "ds." + hashlib.sha256(name.encode()).hexdigest()[:32]


def durable_keys(topic: str) -> tuple[str, str, str, str, str]:
    """A Durable Stream's keys, in the order its Lua scripts take them: its state hash, its
    entries (a stream read like a job's events), its idempotent producers hash, the set of
    its forks' topics and its staged entries (durability ``replicated``)."""
    prefix = _job_prefix(topic)
    return (
        f"{prefix}:dsmeta",
        events_key(topic),
        f"{prefix}:dsprod",
        f"{prefix}:dsforks",
        f"{prefix}:dspend",
    )


def recent_jobs_key(tenant: str) -> str:
    """A sorted set of the tenant's job ids, scored by creation time (ms): ``GET /v1/jobs``."""
    return f"{KEY_PREFIX}:recent:{tenant}"


RECENT_JOBS_KEPT = 1000


def idempotency_key(scope: str, key_digest: str) -> str:
    return f"{KEY_PREFIX}:idem:{scope}:{key_digest}"


def chat_key(chat_digest: str) -> str:
    """On the queue Redis: an AI SDK chat's current generation (by a digest of the tenant and
    the chat id), ``<tenant> <job id>``
    (``api.compat.aisdk``); set in the MULTI/EXEC that enqueues the job."""
    return f"{KEY_PREFIX}:chat:{chat_digest}"


# --- the queue Redis ---------------------------------------------------------------------------

LEASES_KEY = f"{KEY_PREFIX}:leases"
"""Sorted set: job id -> lease deadline (ms), for every job some worker took off the queue."""

REAPER_PROBE_KEY = f"{KEY_PREFIX}:reaper-probe"
"""Written by reapers to learn that Redis takes writes (not only PING) before they reap."""

METRICS_KEY = f"{KEY_PREFIX}:metrics"
"""Hash: the deployment's shared counters and histogram buckets (``tokenrelay.metrics``)."""

WORKERS_KEY = f"{KEY_PREFIX}:workers"
"""Sorted set: worker id -> last heartbeat (s)."""


def slots_key(upstream: str) -> str:
    """Sorted set of an upstream's concurrency slots: job id -> lease deadline (ms)."""
    return f"{KEY_PREFIX}:slots:{upstream}"


def rate_key(tenant: str, minute: int) -> str:
    """Counter of the jobs an API key submitted in one minute (admission control)."""
    return f"{KEY_PREFIX}:rate:{tenant}:{minute}"


WAKE_CHANNEL = f"{KEY_PREFIX}:wake"
"""Pub/sub channel the API publishes to after enqueueing, so idle workers start jobs at once."""

CANCEL_CHANNEL = f"{KEY_PREFIX}:cancel"
"""Pub/sub channel carrying the ids of jobs to cancel; every worker listens."""

JOB_FUNCTION = "generate"
"""The arq function name of a generation job."""
