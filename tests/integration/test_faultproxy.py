"""The fault proxy against a real Valkey: clean passthrough, each fault at its command, and its
RESP parsers across any read boundaries."""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.support.faultproxy import CommandParser, FaultProxy, ReplyParser
from tests.support.servers import db_number
from tokenrelay.processes import free_port


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    target = urlsplit(redis_url)
    async with FaultProxy(target.port or 6379, target_host=target.hostname or "127.0.0.1") as p:
        yield p


@pytest.fixture
def db(redis_db: str) -> int:
    """This test's database of the session server, which the proxy fronts."""
    return db_number(redis_db)


@pytest.fixture
async def direct(redis_db: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_db)
    yield client
    await client.aclose()


@pytest.fixture
async def client(proxy: FaultProxy, db: int) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(proxy.url(db), socket_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
def ns() -> str:
    return f"faultproxy:{uuid.uuid4().hex}:"


async def test_passthrough(proxy: FaultProxy, client: aioredis.Redis, ns: str) -> None:
    async with asyncio.timeout(20):
        assert await client.set(f"{ns}a", "1")
        assert await client.incr(f"{ns}a") == 2
        pipe = client.pipeline(transaction=False)
        for _ in range(2000):
            pipe.incr(f"{ns}n")
        assert await pipe.execute() == list(range(1, 2001))
        async with client.pipeline(transaction=True) as tx:
            tx.set(f"{ns}t", "x")
            tx.append(f"{ns}t", "y")
            tx.get(f"{ns}t")
            assert await tx.execute() == [True, 2, b"xy"]
        big = os.urandom(1024 * 1024)
        assert await client.set(f"{ns}big", big)
        assert await client.get(f"{ns}big") == big
        pipe = client.pipeline(transaction=False)
        pipe.set(f"{ns}big2", big)
        pipe.get(f"{ns}big2")
        pipe.get(f"{ns}big")
        assert await pipe.execute() == [True, big, big]
        assert proxy.stats["commands"] > 2000
        assert proxy.stats["cuts"] == proxy.stats["errors"] == 0


async def test_pubsub_passthrough(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis, ns: str
) -> None:
    async with asyncio.timeout(10), client.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(f"{ns}ch")
        await pubsub.psubscribe(f"{ns}c*")
        await eventually(lambda: direct.pubsub_numpat())
        assert await direct.publish(f"{ns}ch", "hi") == 2
        got = await messages(pubsub, 2)
        assert sorted(m["type"] for m in got) == ["message", "pmessage"]
        assert {m["data"] for m in got} == {b"hi"}


async def messages(pubsub: aioredis.client.PubSub, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            got.append(message)
    return got


async def test_cut_in_a_pipeline_applies_exactly_the_commands_before_it(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis, ns: str
) -> None:
    async with asyncio.timeout(10):
        trigger = proxy.arm(lambda c: c.name == "SET" and c.mentions(f"{ns}b"), "cut")
        pipe = client.pipeline(transaction=False)
        for name, value in zip("abc", "123", strict=True):
            pipe.set(f"{ns}{name}", value)
        with pytest.raises(redis.exceptions.ConnectionError):
            await pipe.execute()
        command = await trigger.wait()
        assert command.args == (b"SET", f"{ns}b".encode(), b"2")
        assert command.name == "SET" and trigger.times == 0
        await eventually(lambda: direct.exists(f"{ns}a"))
        assert await direct.exists(f"{ns}b", f"{ns}c") == 0
        assert proxy.stats["cuts"] == 1
        # Disarmed: the same pipeline now goes through, on a fresh connection.
        pipe.set(f"{ns}b", "2")
        pipe.set(f"{ns}c", "3")
        assert await pipe.execute() == [True, True]


async def test_a_cut_is_a_reset_not_a_close(proxy: FaultProxy) -> None:
    async with asyncio.timeout(10):
        proxy.arm(lambda c: c.name == "ECHO", "cut")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\nPING\r\n")
            with pytest.raises(ConnectionResetError):
                while await reader.read(1024):  # the first reply may come before the reset
                    pass
        finally:
            writer.close()


async def test_cut_all_resets_every_connection(
    proxy: FaultProxy, client: aioredis.Redis, ns: str
) -> None:
    async with asyncio.timeout(10), client.pubsub() as pubsub:
        await pubsub.subscribe(f"{ns}ch")
        assert await client.ping()
        assert proxy.cut_all() == 2
        await eventually(lambda: proxy.open_connections == 0)
        with pytest.raises(redis.exceptions.ConnectionError):
            while True:  # the subscription's confirmation may still be read first
                await pubsub.get_message(timeout=1.0)
        # An idle pooled connection that was reset is replaced without an error.
        assert await client.ping()


async def test_lose_reply_applies_the_command_and_the_client_times_out(
    proxy: FaultProxy, direct: aioredis.Redis, ns: str, db: int
) -> None:
    client = aioredis.Redis.from_url(proxy.url(db), socket_timeout=0.5)
    try:
        async with asyncio.timeout(10):
            proxy.arm(lambda c: c.name == "SET" and c.mentions(f"{ns}k"), "lose_reply")
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.set(f"{ns}k", "v")
            assert 0.4 < time.monotonic() - started < 3
            assert await direct.get(f"{ns}k") == b"v"
            assert proxy.stats["lost_replies"] == 1
            # The client dropped that connection: the proxy closes the black hole with it.
            await eventually(lambda: proxy.open_connections == 0)
            assert await client.get(f"{ns}k") == b"v"
    finally:
        await client.aclose()


async def test_hold_then_forward_or_reset(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis, ns: str
) -> None:
    async with asyncio.timeout(10):
        trigger = proxy.arm(lambda c: c.name == "SET" and c.mentions(f"{ns}k"), "hold")
        task = asyncio.ensure_future(client.set(f"{ns}k", "v"))
        await trigger.wait()
        await asyncio.sleep(0.1)
        assert not task.done()
        assert await direct.get(f"{ns}k") is None
        assert await trigger.release(forward=True) == 1
        assert await task is True
        assert await direct.get(f"{ns}k") == b"v"

        trigger = proxy.arm(lambda c: c.name == "SET" and c.mentions(f"{ns}j"), "hold")
        task = asyncio.ensure_future(client.set(f"{ns}j", "v"))
        await trigger.wait()
        assert await trigger.release(forward=False) == 1
        with pytest.raises(redis.exceptions.ConnectionError):
            await task
        assert await direct.get(f"{ns}j") is None
        assert proxy.stats["holds"] == 2


async def test_hold_reply_applies_and_answers_only_on_release(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis, ns: str
) -> None:
    async with asyncio.timeout(10):
        trigger = proxy.arm(lambda c: c.name == "INCRBY" and c.mentions(f"{ns}k"), "hold_reply")
        task = asyncio.ensure_future(client.incr(f"{ns}k"))
        await trigger.wait()
        await eventually(lambda: direct.exists(f"{ns}k"))
        await asyncio.sleep(0.1)
        assert not task.done()
        assert await trigger.release() == 1
        assert await task == 1
        assert await client.incr(f"{ns}k") == 2

        trigger = proxy.arm(lambda c: c.name == "INCRBY" and c.mentions(f"{ns}k"), "hold_reply")
        task = asyncio.ensure_future(client.incr(f"{ns}k"))
        await trigger.wait()
        await eventually(lambda: _equals(direct.get(f"{ns}k"), b"3"))
        await trigger.release(forward=False)
        with pytest.raises(redis.exceptions.ConnectionError):
            await task


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_down_refuses_then_comes_back_on_the_same_port(
    proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis, ns: str, db: int
) -> None:
    blocking = aioredis.Redis.from_url(proxy.url(db))
    fresh = aioredis.Redis.from_url(proxy.url(db))
    try:
        async with asyncio.timeout(10):
            assert await client.ping()
            blocked = asyncio.ensure_future(blocking.blpop([f"{ns}list"], timeout=5))
            await eventually(lambda: _blpop_waiting(direct))
            port = proxy.port
            await proxy.set_down(True)
            with pytest.raises(redis.exceptions.ConnectionError):
                await blocked
            started = time.monotonic()
            with pytest.raises(redis.exceptions.ConnectionError):
                await fresh.ping()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            assert time.monotonic() - started < 1
            await proxy.set_down(False)
            assert proxy.port == port
            assert await fresh.ping()
            assert await client.ping()
    finally:
        await blocking.aclose()
        await fresh.aclose()


async def test_retarget_sends_new_connections_elsewhere(
    proxy: FaultProxy, ns: str, db: int
) -> None:
    target = proxy.target_port
    client = aioredis.Redis.from_url(proxy.url(db), socket_timeout=2)
    try:
        async with asyncio.timeout(10):
            proxy.retarget(free_port())  # nothing listens there
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            assert proxy.stats["upstream_failures"] == 1
            proxy.retarget(target)
            assert await client.ping()
    finally:
        await client.aclose()


async def _blpop_waiting(direct: aioredis.Redis) -> bool:
    return any(c["cmd"] == "blpop" for c in await direct.client_list(_type="normal"))


@pytest.mark.parametrize("protocol", [2, 3])
async def test_drop_pushes_drops_exactly_the_messages_published_meanwhile(
    proxy: FaultProxy, direct: aioredis.Redis, ns: str, protocol: int, db: int
) -> None:
    client = aioredis.Redis.from_url(proxy.url(db), socket_timeout=2, protocol=protocol)
    try:
        async with asyncio.timeout(10), client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(f"{ns}ch")
            await pubsub.psubscribe(f"{ns}c*")
            await eventually(lambda: direct.pubsub_numpat())
            proxy.drop_pushes(True)
            for i in range(3):
                assert await direct.publish(f"{ns}ch", f"lost{i}") == 2
            await eventually(lambda: proxy.stats["dropped_pushes"] == 6)
            proxy.drop_pushes(False)
            for i in range(2):
                assert await direct.publish(f"{ns}ch", f"kept{i}") == 2
            got = await messages(pubsub, 4)
            assert sorted(m["data"] for m in got) == [b"kept0", b"kept0", b"kept1", b"kept1"]
            await pubsub.ping()
            pong = await messages(pubsub, 1)
            assert pong[0]["type"] == "pong"
            assert await pubsub.get_message(timeout=0.2) is None
            assert proxy.stats["dropped_pushes"] == 6
            assert proxy.stats["errors"] == 0
    finally:
        await client.aclose()


REPLIES: list[tuple[bytes, str]] = [
    (b"+OK\r\n", ""),
    (b"-ERR wrong\r\n", ""),
    (b":-42\r\n", ""),
    (b"$5\r\nhello\r\n", ""),
    (b"$0\r\n\r\n", ""),
    (b"$12\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n", ""),
    (b"$-1\r\n", ""),
    (b"*-1\r\n", ""),
    (b"*0\r\n", ""),
    (b"*2\r\n$3\r\nfoo\r\n*3\r\n:1\r\n$-1\r\n*0\r\n", ""),
    (b"*1\r\n*1\r\n*1\r\n*1\r\n+deep\r\n", ""),
    (b"_\r\n", ""),
    (b",3.14\r\n", ""),
    (b"#t\r\n", ""),
    (b"(3492890328409238509324850943850943825024385\r\n", ""),
    (b"!21\r\nSYNTAX invalid syntax\r\n", ""),
    (b"=15\r\ntxt:Some string\r\n", ""),
    (b"%2\r\n+first\r\n:1\r\n+second\r\n*2\r\n_\r\n#f\r\n", ""),
    (b"~2\r\n+a\r\n+b\r\n", ""),
    (b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n", ""),
    (b"*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n", ""),
    (b"|0\r\n+bare\r\n", ""),
    (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nhi\r\n\r\n", "push"),
    (b">4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$0\r\n\r\n", "push"),
    (b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", ""),
    (b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", "array"),
    (b"*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$2\r\nhi\r\n", "array"),
    (b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", "array"),
    (b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", ""),
    (b"*0\r\n", ""),  # followed by what looks like a message: that is the next value
    (b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", "array"),
    (b"*-1\r\n", ""),
    (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", "push"),
    (b"*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n", ""),  # no message: two elements
    (b"$100000\r\n" + b"x\r\n" * 33333 + b"y\r\n", ""),
]


def reply_ends(chunks: list[bytes]) -> list[tuple[int, str]]:
    """Absolute value ends and kinds, consuming each value as soon as it is complete."""
    parser, taken = ReplyParser(), 0
    found: list[tuple[int, str]] = []
    for chunk in chunks:
        ends = parser.feed(chunk)
        found += [(taken + end, kind) for end, kind in ends]
        if ends:
            parser.take(ends[-1][0])
            taken += ends[-1][0]
    assert parser.buf == b""
    return found


def test_reply_parser_finds_the_same_values_at_any_read_boundary() -> None:
    stream = b"".join(raw for raw, _ in REPLIES)
    expected, offset = [], 0
    for raw, kind in REPLIES:
        offset += len(raw)
        expected.append((offset, kind))
    assert reply_ends([stream]) == expected
    assert reply_ends([stream[i : i + 1] for i in range(len(stream))]) == expected
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert reply_ends(chunks) == expected


def test_reply_parser_waits_for_a_whole_value_and_refuses_garbage() -> None:
    parser = ReplyParser()
    assert parser.feed(b"*2\r\n:1\r\n") == []
    with pytest.raises(ValueError):
        parser.take(1)
    assert parser.feed(b"$3\r\nab") == []
    assert parser.feed(b"c\r\n") == [(17, "")]
    with pytest.raises(Exception, match="unknown RESP type"):
        ReplyParser().feed(b"?what\r\n")


COMMANDS: list[tuple[bytes, tuple[bytes, ...]]] = [
    (b"*1\r\n$4\r\nPING\r\n", (b"PING",)),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\na\r\nb\r\n\r\n", (b"SET", b"k", b"a\r\nb\r\n")),
    (b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", (b"GET", b"")),
    (b"PING inline\r\n", (b"PING", b"inline")),
    (b"\r\n", ()),
    (b"*0\r\n", ()),
    (b"*2\r\n$4\r\nECHO\r\n$70000\r\n" + b"z" * 70000 + b"\r\n", (b"ECHO", b"z" * 70000)),
]


def test_command_parser_finds_the_same_commands_at_any_read_boundary() -> None:
    stream = b"".join(raw for raw, _ in COMMANDS)
    expected, offset = [], 0
    for raw, args in COMMANDS:
        offset += len(raw)
        expected.append((offset, args))
    for size in (len(stream), 1, 3, 4096):
        parser, taken, found = CommandParser(), 0, []
        for i in range(0, len(stream), size):
            done = parser.feed(stream[i : i + size])
            found += [(taken + end, args) for end, args in done]
            if done:
                parser.take(done[-1][0])
                taken += done[-1][0]
        assert found == expected, size
