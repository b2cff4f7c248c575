"""Writes that must reach a replica before anyone acts on them (durability ``replicated``).

``WAIT 1`` counts only the writes of its own connection, so such a write and its WAIT go down
one connection of the node holding the key, in one pipeline (``run_then_wait``). On a Redis
Cluster that is a plain client of the key's node (``NodeClients``); on one Redis (or a
Sentinel's primary) the client itself, whose pipeline holds one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from tokenrelay.store.connections import Streams, is_cluster

TOPOLOGY_REFRESH_S = 0.5


class NodeClients:
    """The client of the node holding a key, one per node, kept (see the module)."""

    def __init__(self, redis: Streams) -> None:
        self.redis = redis
        self._nodes: dict[str, Redis] = {}
        self._refreshed_at = 0.0

    def of(self, key: str) -> tuple[str, Redis]:
        """(a name for the node, its client) holding ``key`` now."""
        if not is_cluster(self.redis):
            return "single", cast(Redis, self.redis)
        node = cast(RedisCluster, self.redis).get_node_from_key(key)
        if node is None:
            raise RedisConnectionError(f"no cluster node holds {key!r} now")
        client = self._nodes.get(node.name)
        if client is None:
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            client = self._nodes[node.name] = Redis(connection_pool=pool)
        return node.name, client

    async def refresh(self) -> None:
        """After an error on a cluster: learn the slots again (a failover moves them), at
        most every ``TOPOLOGY_REFRESH_S``."""
        if not is_cluster(self.redis):
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._refreshed_at < TOPOLOGY_REFRESH_S:
            return
        self._refreshed_at = loop.time()
        try:
            await cast(RedisCluster, self.redis).nodes_manager.initialize()
        except Exception:
            # The next write's errors try again. Not only RedisError: redis-py raises
            # RedisClusterException, and RuntimeError when the cluster client's own
            # initialize runs at the same time (a dict changed while iterated).
            pass

    async def aclose(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            await client.aclose()


def wait_command(wait_ms: int) -> tuple[Any, ...]:
    return ("WAIT", 1, wait_ms)


def unacknowledged(acked: Any, wait_ms: int) -> ResponseError | None:
    """The error for writes whose WAIT did not see a replica take them, or None. Transient
    (``NOREPLICAS``), whatever WAIT met: a node that became a replica refuses WAIT, and the
    next try goes to the new primary."""
    if isinstance(acked, BaseException):
        return ResponseError(f"NOREPLICAS the wait for a replica failed: {str(acked)[:80]}")
    if int(acked) < 1:
        return ResponseError(f"NOREPLICAS no replica acknowledged within {wait_ms} ms")
    return None


async def run_then_wait(
    client: Redis,
    lua: AsyncScript,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
    *tail: tuple[Any, ...],
) -> list[Any]:
    """``lua`` once per call, then the ``tail`` commands (a WAIT), down one connection in one
    round trip; each result is its reply or its error. Loads the script when Redis lost it (a
    restart or a promoted replica that never ran it): the scripts used so are safe to run
    again."""
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(lua.sha, len(keys), *keys, *args)
        for command in tail:
            pipe.execute_command(*command)
        results = await pipe.execute(raise_on_error=False)
    if any(isinstance(r, NoScriptError) for r in results):
        await client.script_load(lua.script)
        return await run_then_wait(client, lua, calls, *tail)
    return list(results)


async def write_then_wait(
    client: Redis,
    lua: AsyncScript,
    keys: Sequence[str],
    args: Sequence[Any],
    wait_ms: int,
    *,
    wrote: Container[Any],
) -> Any:
    """One ``lua`` call, then a WAIT for a replica; its reply, once a replica holds it when the
    reply is one of those that ``wrote``. Raises its error, or a transient ``NOREPLICAS`` when
    no replica acknowledged in ``wait_ms``."""
    reply, acked = await run_then_wait(client, lua, [(keys, args)], wait_command(wait_ms))
    if isinstance(reply, BaseException):
        raise reply
    if reply in wrote and (error := unacknowledged(acked, wait_ms)) is not None:
        raise error
    return reply
