"""Durable Streams' staging (durability ``replicated``) at the Lua level, on a real Valkey: what
a publish shows readers, and when it tells a write it was lost. The WAITs between the steps
are the callers' (``DurableStreamStore._settle``); here the steps are run in the orders that
concurrent writers and a failover can give them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tokenrelay.keys import durable_keys, durable_topic
from tokenrelay.store.streams import MESSAGES, DurableStreamStore
from tokenrelay.wire import ZERO_ID

JSON = "application/json"
OWNER = "o"


@pytest.fixture
async def store(redis_db: str) -> AsyncIterator[DurableStreamStore]:
    redis = Redis.from_url(redis_db)
    try:
        yield DurableStreamStore(redis, retention_s=60, replicated=True)
    finally:
        await redis.aclose()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def create(store: DurableStreamStore, topic: str) -> None:
    args = [OWNER, JSON, JSON, "", "", "", "0", store.retention_ms, "tc"]
    await store._create(keys=durable_keys(topic), args=args)


async def stage(
    store: DurableStreamStore,
    topic: str,
    token: str,
    *messages: bytes,
    close: bool = False,
    producer: tuple[str, int, int] | None = None,
) -> list[str]:
    """One staged append: its reply (status, tail, detail, last staged id, mine, pending)."""
    pid, epoch, seq = ("", "", "") if producer is None else (str(v) for v in producer)
    args: list[Any] = [OWNER, JSON, "1" if close else "0", "", pid, epoch, seq]
    args += [store.retention_ms, token, *messages]
    return [text(v) for v in await store._append(keys=durable_keys(topic), args=args)]


async def publish(
    store: DurableStreamStore,
    topic: str,
    upto: str,
    *,
    token: str = "",
    closed: bool = False,
    producer: tuple[str, int, int] | None = None,
) -> str:
    pid, epoch, seq = ("", "", "") if producer is None else (str(v) for v in producer)
    args = [upto, store.retention_ms, "1" if closed else "0", token, pid, epoch, seq]
    reply = await store._publish(keys=durable_keys(topic), args=args)
    return text(reply[0])


async def visible(store: DurableStreamStore, topic: str) -> tuple[list[bytes], bool]:
    """What a reader gets from the start: the messages, and whether the stream is closed."""
    page = await store.read(topic, OWNER, ZERO_ID, 1000)
    assert page is not None
    return [e.data for e in page.entries if e.type in MESSAGES], page.closed


async def test_a_publish_shows_only_what_its_own_wait_covered(store: DurableStreamStore) -> None:
    """A stages a1 (its WAIT returns), B stages b1 (its WAIT still running): A's publish shows
    readers a1 and not b1, which no replica may hold yet; B's publish then shows b1."""
    topic = durable_topic("interleaved")
    await create(store, topic)
    a = await stage(store, topic, "ta", b'"a1"')
    b = await stage(store, topic, "tb", b'"b1"', close=True)
    assert a[0] == b[0] == "ok" and a[4] == b[4] == "1"
    assert await publish(store, topic, a[3], token="ta") == "ok"
    assert await visible(store, topic) == ([b'"a1"'], False)
    assert await publish(store, topic, b[3], token="tb", closed=True) == "ok"
    assert await visible(store, topic) == ([b'"a1"', b'"b1"'], True)
    assert await store.redis.xlen(durable_keys(topic)[4]) == 0  # nothing left pending


async def test_a_publish_of_a_later_write_covers_the_earlier(store: DurableStreamStore) -> None:
    """B staged after A, and B's WAIT returned first: it covers A's staging too (a replica
    takes writes in order), so B's publish shows both; A's publish then finds its own."""
    topic = durable_topic("later-first")
    await create(store, topic)
    a = await stage(store, topic, "ta", b'"a1"')
    b = await stage(store, topic, "tb", b'"b1"')
    assert await publish(store, topic, b[3], token="tb") == "ok"
    assert await publish(store, topic, a[3], token="ta") == "ok"
    assert await visible(store, topic) == ([b'"a1"', b'"b1"'], False)


async def test_a_write_lost_in_a_failover_is_told_so_even_after_later_writes(
    store: DurableStreamStore,
) -> None:
    """A's staging is lost with the primary (here: taken out of the pending stream, as the
    promoted replica never had it); C writes on the new primary, with a later id. A's publish
    must answer ``lost``, not ``ok`` because some entry at or after its id is there; and a
    producer's duplicate is kept only while the producer's state shows it."""
    topic = durable_topic("lost")
    await create(store, topic)
    a = await stage(store, topic, "ta", b'"a1"')
    pending = durable_keys(topic)[4]
    await store.redis.xdel(pending, a[3])  # the failover: a1 never reached the replica
    c = await stage(store, topic, "tc", b'"c1"')
    assert await publish(store, topic, c[3], token="tc") == "ok"
    assert await publish(store, topic, a[3], token="ta") == "lost"
    assert await visible(store, topic) == ([b'"c1"'], False)

    p = await stage(store, topic, "tp", b'"p0"', producer=("w", 0, 0))
    assert await publish(store, topic, p[3], token="tp") == "ok"
    dup = await stage(store, topic, "tq", b'"p0"', producer=("w", 0, 0))
    assert dup[0] == "dup" and dup[4] == "0"
    assert await publish(store, topic, dup[3], producer=("w", 0, 0)) == "ok"
    await store.redis.hdel(durable_keys(topic)[2], "w")  # its state lost
    assert await publish(store, topic, dup[3], producer=("w", 0, 0)) == "lost"


async def test_a_staged_close_that_was_not_confirmed_is_published_by_the_next_write(
    store: DurableStreamStore,
) -> None:
    """A close staged but never published (its writer got a 503): the next write sees the
    stream closed, and says there is staging to publish, so readers do not wait on a stream
    that writers see closed."""
    topic = durable_topic("wedged")
    await create(store, topic)
    close = await stage(store, topic, "tx", close=True)
    assert close[0] == "ok"
    assert await visible(store, topic) == ([], False)
    later = await stage(store, topic, "ty", b'"late"')
    assert later[0] == "closed" and later[5] == "1"  # staging waits to be published
    assert await publish(store, topic, later[3]) == "ok"
    assert await visible(store, topic) == ([], True)
