"""The two Redis connections: the queue (arq, pub/sub, leases, metrics; one node) and the
streams (job events and state; one node, or a Redis Cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeAlias, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from tokenrelay.redis_url import is_sentinel, parse_sentinel
from tokenrelay.settings import Settings

Streams: TypeAlias = Redis | RedisCluster
"""Where job events and state live. Every key of one job shares the hash tag ``{job_id}``, so
a job lives in one slot; nothing tokenrelay does spans two jobs' keys in one command."""


def _timeouts(settings: Settings) -> dict[str, Any]:
    """A reply that never comes (a half-dead connection) is an error after this long, not a
    hang: the callers retry it on a new connection (see ``tokenrelay.resilience``)."""
    return {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }


def sentinel_pool(url: str, **options: Any) -> SentinelConnectionPool:
    """A pool of connections to the primary the Sentinels of ``url`` name: each (re)connect
    asks them again, so after a promotion the pool reaches the new primary (a connection to a
    demoted one fails with READONLY and is dropped)."""
    parsed = parse_sentinel(url)
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        parsed.sentinels,
        sentinel_kwargs={**parsed.sentinel_kwargs(), **sentinel_options},
        **parsed.node_kwargs(),
        **options,
    )
    return SentinelConnectionPool(  # type: ignore[no-untyped-call]
        parsed.service, sentinel, **{**sentinel.connection_kwargs, "is_master": True}
    )


SENTINEL_ASK_S = 1.0
"""How long ``named_primary`` waits for the Sentinels' answers."""


async def named_primary(pool: SentinelConnectionPool) -> tuple[str, int] | None:
    """The primary the Sentinels name now: all asked at once, for ``SENTINEL_ASK_S``; of those
    that answer and see it up, the answer of the newest configuration epoch (a Sentinel cut off
    from the others may still name the primary they replaced). None if none answers."""
    manager = pool.sentinel_manager

    async def ask(sentinel: Redis) -> Any:
        return (await cast(Any, sentinel).sentinel_masters()).get(pool.service_name)

    try:
        async with asyncio.timeout(SENTINEL_ASK_S):
            states = await asyncio.gather(
                *(ask(s) for s in manager.sentinels), return_exceptions=True
            )
    except TimeoutError:
        return None
    up = [
        state
        for state in states
        if isinstance(state, dict) and manager.check_master_state(state, pool.service_name)
    ]
    if not up:
        return None
    newest = max(up, key=lambda state: int(state.get("config-epoch", 0)))
    return str(newest["ip"]), int(newest["port"])


async def follow_primary(client: Streams) -> bool:
    """A Sentinel client: ask the Sentinels which node is the primary now, and drop the
    client's idle connections (and a single-connection client's own) to any other node, so its
    next commands go to that primary. Whether any was dropped; False for other clients, and
    when no Sentinel answers.

    A connection to a primary that was demoted fails by itself (READONLY) and reconnects to
    the new one. Not so after a second failover while the first primary still runs (Sentinels
    that lost touch with a busy primary for ``down-after-milliseconds`` promote its replica):
    until the Sentinels make it a replica, that primary takes writes nobody else reads. A
    worker renewing its leases there would see them lapse on the real primary. (A connection
    in use during the call stays until a later call finds it idle.)"""
    if not isinstance(client, Redis):
        return False
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return False
    found = await named_primary(pool)
    if found is None:
        return False
    primary = (str(found[0]), int(found[1]))
    pool.master_address = found

    def stale(connection: Any) -> bool:
        return bool(connection.is_connected) and (connection.host, connection.port) != primary

    # Taken out of the pool before the first await, so no command starts on one meanwhile.
    # redis-py 5 keeps no public list of a pool's idle connections.
    idle = pool._available_connections
    dropped = [c for c in idle if stale(c)]
    pool._available_connections = [c for c in idle if c not in dropped]
    for connection in dropped:
        await connection.disconnect()
        pool._available_connections.append(connection)
    own = client.connection
    if own is not None and stale(own):
        # Not while a command of the client's own runs on it (another task's).
        async with client._single_conn_lock:
            if stale(own):
                await own.disconnect()
                dropped.append(own)
    return bool(dropped)


async def close(client: Streams) -> None:
    """Close ``client``; on Sentinel its pool too (a client given a pool leaves it open) and
    the clients of its Sentinels."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        await pool.disconnect()
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def _client(url: str, **options: Any) -> Redis:
    if is_sentinel(url):
        single = bool(options.pop("single_connection_client", False))
        return Redis(connection_pool=sentinel_pool(url, **options), single_connection_client=single)
    return cast(Redis, Redis.from_url(url, **options))


def queue_client(settings: Settings, **options: Any) -> Redis:
    return _client(settings.queue_dsn, **{**_timeouts(settings), **options})


def streams_client(settings: Settings, queue: Redis | None = None) -> Streams:
    """The streams client; the queue client itself when both are the same single node (a
    submit is then one atomic round trip)."""
    if settings.streams_cluster:
        return cast(
            RedisCluster, RedisCluster.from_url(settings.streams_dsn, **_timeouts(settings))
        )
    if queue is not None and settings.streams_dsn == settings.queue_dsn:
        return queue
    return _client(settings.streams_dsn, **_timeouts(settings))


def script(client: Streams, source: str) -> AsyncScript:
    """A Lua script bound to ``client`` (either kind runs it on the node of its first key)."""
    return cast(AsyncScript, cast(Any, client).register_script(source))


async def eval_many(
    client: Redis, lua: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run ``lua`` once per ``(keys, args)`` in one pipelined round trip (not a transaction);
    each result is the reply or the error of its call. Loads the script first if Redis lost it
    (a restart or a flush), so a NOSCRIPT never reaches the caller."""
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(lua.sha, len(keys), *keys, *args)
        results = await pipe.execute(raise_on_error=False)
    if any(isinstance(r, NoScriptError) for r in results):
        await client.script_load(lua.script)
        return await eval_many(client, lua, calls)
    return list(results)


def is_cluster(client: Streams) -> bool:
    return isinstance(client, RedisCluster)


READER_BLOCK_S = 10.0
"""How long a hub reader's XREAD blocks (``tokenrelay.fanout``); its socket waits longer."""


def node_client(settings: Settings, node: ClusterNode | None) -> Redis:
    """A one-connection client of a streams node (``None``: the single streams server), for a
    reader that keeps its connection blocked in XREAD: a reply may take the whole block, and
    one that takes longer than that and ``redis_timeout_s`` is lost (a half-dead connection)."""
    timeouts = {**_timeouts(settings), "socket_timeout": READER_BLOCK_S + settings.redis_timeout_s}
    if node is None:
        return _client(settings.streams_dsn, single_connection_client=True, **timeouts)
    # The node's own connection settings: password, username, TLS as the cluster client has.
    kwargs = {**node.connection_kwargs, **timeouts}
    pool = ConnectionPool(connection_class=node.connection_class, **kwargs)
    return Redis(connection_pool=pool, single_connection_client=True)
