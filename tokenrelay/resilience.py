"""Which Redis errors pass, and retrying them within a budget.

Every Redis error tokenrelay can meet is one of two kinds:

- **transient**: the server or the path to it is briefly unable, and the same command may
  succeed soon: connection refused, reset or timed out (``ConnectionError``,
  ``TimeoutError``, ``OSError``), ``LOADING`` after a restart, ``OOM`` at ``maxmemory``,
  ``MISCONF`` (a failed disk save), ``READONLY`` (a replica, during a failover), ``NOSCRIPT``
  (scripts lost in a restart or flush; the callers load them again), and a cluster's
  ``MOVED`` / ``ASK`` / ``TRYAGAIN`` / ``CLUSTERDOWN`` / ``MASTERDOWN``;
- **permanent**: anything else (a wrong password, a bug of ours such as a script error, a
  fenced write). Retrying cannot help.

Writes are safe to retry: every write of a job's events is exactly-once by sequence number,
and takes, claims and ends are idempotent for the same owner.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    ExecAbortError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger("tokenrelay.resilience")

T = TypeVar("T")

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    RedisTimeoutError,
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    NoScriptError,
    TryAgainError,
    ClusterDownError,
    AskError,  # MovedError too
    ExecAbortError,  # a transaction discarded because a command in it met OOM or READONLY
    OSError,  # also TimeoutError and ConnectionRefusedError
)
_TRANSIENT_PREFIXES = (
    "MISCONF",
    "LOADING",
    "OOM",
    "READONLY",
    "NOSCRIPT",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "MOVED",
    "ASK",
    "NOREPLICAS",
    "BUSY ",
)

FIRST_DELAY_S = 0.05
MAX_DELAY_S = 1.0


def is_transient(exc: BaseException) -> bool:
    """Whether the same Redis command may succeed if tried again shortly."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    if isinstance(exc, (RedisConnectionError, *_TRANSIENT_TYPES)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT_PREFIXES)


class Backoff:
    """Exponential backoff with jitter, from 50 ms up to 1 s a step, within a total budget."""

    def __init__(self, budget_s: float) -> None:
        self._deadline = asyncio.get_running_loop().time() + budget_s
        self._delay = FIRST_DELAY_S

    async def wait(self) -> bool:
        """Sleep before the next try; False (at once) when that would pass the budget."""
        loop = asyncio.get_running_loop()
        delay = self._delay * random.uniform(0.5, 1.0)
        if loop.time() + delay > self._deadline:
            return False
        await asyncio.sleep(delay)
        self._delay = min(self._delay * 2, MAX_DELAY_S)
        return True


async def retrying(op: Callable[[], Awaitable[T]], *, budget_s: float, what: str) -> T:
    """``await op()``, again after each transient Redis error, for at most ``budget_s``.

    Raises the last error when the budget is spent, and a permanent error at once.
    """
    backoff = Backoff(budget_s)
    while True:
        try:
            return await op()
        except (RedisError, OSError) as exc:
            if not is_transient(exc) or not await backoff.wait():
                raise
            log.warning("redis_retry", what=what, error=type(exc).__name__)
