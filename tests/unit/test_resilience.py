"""Unit tests of tokenrelay.resilience: which Redis errors are retried, and the retry loop.

The errors are made by redis-py's own reply parser from the error lines Redis sends, so each
is exactly the exception a real reply raises."""

from __future__ import annotations

import asyncio

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenrelay.resilience import is_transient, retrying

TRANSIENT_REPLIES = [
    "OOM command not allowed when used memory > 'maxmemory'.",
    "MISCONF Errors writing to the AOF file: No space left on device",
    "READONLY You can't write against a read only replica.",
    "LOADING Redis is loading the dataset in memory",
    "NOSCRIPT No matching script. Please use EVAL.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
    "BUSY Redis is busy running a script.",
    "NOREPLICAS Not enough good replicas to write.",
    "EXECABORT Transaction discarded because of previous errors.",
]
PERMANENT_REPLIES = [
    "ERR Error running script (call to f_x): @user_script:1: Script attempted to access key",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "FENCED the job is not owned by this attempt",
    "GAP expected event 3 got 5",
    "WRONGPASS invalid username-password pair or user is disabled.",
    "NOPERM this user has no permissions to run the 'evalsha' command",
]


@pytest.mark.parametrize("reply", TRANSIENT_REPLIES)
def test_transient_replies_are_retried(reply: str) -> None:
    assert is_transient(BaseParser.parse_error(reply))


@pytest.mark.parametrize("reply", PERMANENT_REPLIES)
def test_permanent_replies_are_not(reply: str) -> None:
    assert not is_transient(BaseParser.parse_error(reply))


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Connection refused"),
        RedisTimeoutError("Timeout reading from socket"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
    ],
)
def test_lost_connections_and_timeouts_are_retried(error: BaseException) -> None:
    assert is_transient(error)


def test_a_wrong_password_is_not_retried() -> None:
    assert not is_transient(AuthenticationError("invalid password"))


async def test_retrying_until_it_passes() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise BaseParser.parse_error("LOADING Redis is loading the dataset in memory")
        return "ok"

    assert await retrying(flaky, budget_s=5, what="test") == "ok"
    assert calls == 3


async def test_retrying_gives_up_at_the_budget_with_the_last_error() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise RedisConnectionError("Connection refused")

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RedisConnectionError):
        await retrying(down, budget_s=0.5, what="test")
    assert calls >= 3
    assert loop.time() - started <= 0.6


async def test_retrying_raises_a_permanent_error_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise BaseParser.parse_error("WRONGTYPE Operation against a key holding the wrong kind")

    with pytest.raises(ResponseError):
        await retrying(broken, budget_s=5, what="test")
    assert calls == 1
    assert issubclass(ResponseError, RedisError)
