"""The two durability settings' event writers; ``replicated``: no reader sees an event before a
replica holds it (``local``'s writer is ``tokenrelay.store.restore.LocalWriter``).

Redis replicates asynchronously: an event its primary acknowledged may be gone after a replica
is promoted. With ``TOKENRELAY_DURABILITY=replicated`` the worker's writer (``ReplicatedWriter``)
makes each write round two steps per Redis node:

1. **stage**: every batch of the round goes to its job's *pending* stream (``lua/stage.lua``;
   no reader follows it), then one ``WAIT 1`` on the same connection: the whole round, however
   many jobs and deltas, waits once for a replica;
2. **publish**: once a replica acknowledged, the staged entries are copied into the job's event
   stream *with the ids they were staged under* (``lua/publish.lua``), with their text and
   status fields. A round holding a job's ``end`` waits once more, so a finished job is on a
   replica before its worker lets it go.

A failover can lose a publish that listeners already saw, but never the staged entries behind
it: the next publish (the worker's, or the reaper's ``end_staged.lua``) copies them again,
with the same ids and data, so every replay equals what any listener saw. The ends no worker's
round writes (the reaper's, a cancel before start) are staged and waited for in the same way
(``JobStore``). A round no replica acknowledges within ``replica_wait_s`` is retried like any
transient error, up to ``write_retry_s``; past that the job ends with a retryable
``store_unavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenrelay.keys import events_key, job_keys, pending_key
from tokenrelay.settings import Settings
from tokenrelay.store.connections import Streams, is_cluster, script
from tokenrelay.store.events import EventWriter, _Batch
from tokenrelay.store.replication import (
    NodeClients,
    run_then_wait,
    unacknowledged,
    wait_command,
)
from tokenrelay.store.restore import LocalWriter

_LUA = resources.files("tokenrelay.store") / "lua"
STAGE_LUA = (_LUA / "stage.lua").read_text()
PUBLISH_LUA = (_LUA / "publish_fn.lua").read_text() + (_LUA / "publish.lua").read_text()


def event_writer(redis: Streams, settings: Settings) -> EventWriter:
    """The event writer ``settings.durability`` asks for."""
    options: dict[str, Any] = {
        "maxlen": settings.stream_maxlen,
        "safety_ttl_s": settings.unfinished_ttl_s,
        "retry_s": settings.write_retry_s,
    }
    if settings.durability == "replicated":
        return ReplicatedWriter(redis, wait_s=settings.replica_wait_s, **options)
    return LocalWriter(redis, keep=settings.restore_events, **options)


class ReplicatedWriter(EventWriter):
    """An ``EventWriter`` whose rounds publish only what a replica acknowledged (see the
    module's docstring). Same contract as ``EventWriter``: a batch's future settles with its
    last event id once it is published, or with the error that ended its retries."""

    def __init__(self, redis: Streams, *, wait_s: float = 1.0, **options: Any) -> None:
        super().__init__(redis, **options)
        self.wait_ms = max(1, int(wait_s * 1000))
        self._stage = script(redis, STAGE_LUA)
        self._publish = script(redis, PUBLISH_LUA)
        self._nodes = NodeClients(redis)
        self.waits = 0

    async def aclose(self) -> None:
        await super().aclose()
        await self._nodes.aclose()

    async def _execute(self, batches: list[_Batch]) -> list[Any]:
        results: list[Any] = [None] * len(batches)
        groups: dict[str, tuple[Redis, list[int]]] = {}
        for i, batch in enumerate(batches):
            try:
                name, client = self._nodes.of(events_key(batch.job_id))
            except RedisError as exc:
                results[i] = exc
                continue
            groups.setdefault(name, (client, []))[1].append(i)

        async def run(client: Redis, indexes: list[int]) -> None:
            try:
                out = await self._round(client, [batches[i] for i in indexes])
            except (RedisError, OSError) as exc:
                out = [exc] * len(indexes)
            for i, result in zip(indexes, out, strict=True):
                results[i] = result

        await asyncio.gather(*(run(client, indexes) for client, indexes in groups.values()))
        if is_cluster(self.redis) and any(isinstance(r, BaseException) for r in results):
            await self._nodes.refresh()
        return results

    async def _round(self, client: Redis, batches: list[_Batch]) -> list[Any]:
        """Stage ``batches`` and wait for a replica, then publish those staged."""
        wait = wait_command(self.wait_ms)
        staged = await run_then_wait(
            client, self._stage, [self._stage_call(b) for b in batches], wait
        )
        self.waits += 1
        replies, acked = staged[:-1], staged[-1]
        out: list[Any] = [None] * len(batches)
        ready: list[tuple[int, Any]] = []
        for j, reply in enumerate(replies):
            if isinstance(reply, BaseException):
                out[j] = reply
            elif (missed := unacknowledged(acked, wait[2])) is not None:
                out[j] = missed
            else:
                ready.append((j, reply[0]))
        if not ready:
            return out
        final = any(batches[j].final_ttl for j, _ in ready)
        calls = [
            (
                (*job_keys(batches[j].job_id), pending_key(batches[j].job_id)),
                [batches[j].owner, upto, self.maxlen, self.safety_ttl_s],
            )
            for j, upto in ready
        ]
        published = await run_then_wait(client, self._publish, calls, *([wait] if final else []))
        if final:
            self.waits += 1
            published, acked = published[:-1], published[-1]
            if (error := unacknowledged(acked, wait[2])) is not None:
                # The end may not be on a replica yet: write the round again (it is applied
                # once), so the worker lets the job go only once a replica holds its end.
                published = [
                    error if batches[j].final_ttl and not isinstance(r, BaseException) else r
                    for (j, _), r in zip(ready, published, strict=True)
                ]
        for (j, _), result in zip(ready, published, strict=True):
            out[j] = result
        return out

    def _stage_call(self, batch: _Batch) -> tuple[Sequence[str], list[Any]]:
        keys = (*job_keys(batch.job_id), pending_key(batch.job_id))
        return keys, batch.args(self.maxlen, self.safety_ttl_s)
