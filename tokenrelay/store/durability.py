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
it: the next publish (the worker's, or the reaper's ``fail.lua``) copies them again, with the
same ids and data, so every replay equals what any listener saw. A round no replica
acknowledges within ``replica_wait_s`` is retried like any transient error, up to
``write_retry_s``; past that the job ends with a retryable ``store_unavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tokenrelay.keys import events_key, job_keys, pending_key
from tokenrelay.settings import Settings
from tokenrelay.store.connections import Streams, is_cluster, script
from tokenrelay.store.events import EventWriter, _Batch
from tokenrelay.store.restore import LocalWriter

_LUA = resources.files("tokenrelay.store") / "lua"
STAGE_LUA = (_LUA / "stage.lua").read_text()
PUBLISH_LUA = (_LUA / "publish_fn.lua").read_text() + (_LUA / "publish.lua").read_text()
TOPOLOGY_REFRESH_S = 0.5


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
        self._nodes: dict[str, Redis] = {}
        self._refreshed_at = 0.0
        self.waits = 0

    async def aclose(self) -> None:
        await super().aclose()
        nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            await client.aclose()

    async def _execute(self, batches: list[_Batch]) -> list[Any]:
        results: list[Any] = [None] * len(batches)
        groups: dict[str, tuple[Redis, list[int]]] = {}
        for i, batch in enumerate(batches):
            try:
                name, client = self._node_of(batch.job_id)
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
            await self._refresh()
        return results

    def _node_of(self, job_id: str) -> tuple[str, Redis]:
        """The client of the node holding the job: WAIT counts only the writes of its own
        connection, so a round's stage and wait go down one node connection, in a pipeline."""
        if not is_cluster(self.redis):
            return "single", cast(Redis, self.redis)
        node = cast(RedisCluster, self.redis).get_node_from_key(events_key(job_id))
        if node is None:
            raise RedisConnectionError(f"no cluster node holds job {job_id!r} now")
        client = self._nodes.get(node.name)
        if client is None:
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            client = self._nodes[node.name] = Redis(connection_pool=pool)
        return node.name, client

    async def _refresh(self) -> None:
        """After an error on a cluster: learn the slots again (a failover moves them), at
        most every ``TOPOLOGY_REFRESH_S``."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._refreshed_at < TOPOLOGY_REFRESH_S:
            return
        self._refreshed_at = loop.time()
        try:
            await cast(RedisCluster, self.redis).nodes_manager.initialize()
        except Exception:
            # The next round's errors try again. Not only RedisError: redis-py raises
            # RedisClusterException, and RuntimeError when the cluster client's own
            # initialize runs at the same time (a dict changed while iterated).
            pass

    async def _round(self, client: Redis, batches: list[_Batch]) -> list[Any]:
        """Stage ``batches`` and wait for a replica, then publish those staged."""
        wait = ("WAIT", 1, self.wait_ms)
        staged = await _pipeline(client, self._stage, [self._stage_call(b) for b in batches], wait)
        self.waits += 1
        replies, acked = staged[:-1], staged[-1]
        out: list[Any] = [None] * len(batches)
        ready: list[tuple[int, Any]] = []
        for j, reply in enumerate(replies):
            if isinstance(reply, BaseException):
                out[j] = reply
            elif (missed := _unacknowledged(acked, wait[2])) is not None:
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
        published = await _pipeline(client, self._publish, calls, *([wait] if final else []))
        if final:
            self.waits += 1
            published, acked = published[:-1], published[-1]
            if (error := _unacknowledged(acked, wait[2])) is not None:
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


def _unacknowledged(acked: Any, wait_ms: int) -> ResponseError | None:
    """The error for a round whose WAIT did not see a replica take it, or None. Transient
    (``NOREPLICAS``), whatever WAIT met: a node that became a replica refuses WAIT, and the
    next try goes to the new primary."""
    if isinstance(acked, BaseException):
        return ResponseError(f"NOREPLICAS the wait for a replica failed: {str(acked)[:80]}")
    if int(acked) < 1:
        return ResponseError(f"NOREPLICAS no replica acknowledged within {wait_ms} ms")
    return None


async def _pipeline(
    client: Redis,
    lua: AsyncScript,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
    *tail: tuple[Any, ...],
) -> list[Any]:
    """``lua`` once per call, then the ``tail`` commands, down one connection in one round
    trip; each result is its reply or its error. Loads the script when Redis lost it (a
    restart or a promoted replica that never ran it): both scripts are safe to run again."""
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(lua.sha, len(keys), *keys, *args)
        for command in tail:
            pipe.execute_command(*command)
        results = await pipe.execute(raise_on_error=False)
    if any(isinstance(r, NoScriptError) for r in results):
        await client.script_load(lua.script)
        return await _pipeline(client, lua, calls, *tail)
    return list(results)
