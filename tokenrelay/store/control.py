"""The queue Redis's control plane: wake-up and cancel signals, worker heartbeats, and the
deployment's shared metrics. Nothing here knows arq."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenrelay.keys import CANCEL_CHANNEL, WAKE_CHANNEL, WORKERS_KEY
from tokenrelay.metrics import WORKER_ALIVE_S, record_job

log = structlog.get_logger("tokenrelay.control")


class Control:
    """Signals, heartbeats and metrics, on the queue Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def signal_cancel(self, job_id: str) -> None:
        """Tell every worker to stop the job if it runs there (its next write reply says so
        too, should the message be lost)."""
        await self.redis.publish(CANCEL_CHANNEL, job_id.encode())

    async def follow_signals(
        self, on_wake: Callable[[str | None], None], on_cancel: Callable[[str], bool]
    ) -> None:
        """Follow the wake-up and cancel channels for the worker's life, reconnecting as
        needed: ``on_wake(job_id)`` (None: look at the queue), ``on_cancel(job_id)`` (True
        when the job ran here).

        Losing a message costs little: a lost wake-up waits for the next poll, a lost cancel
        is seen in the reply of the job's next write."""
        delay = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(WAKE_CHANNEL, CANCEL_CHANNEL)
                on_wake(None)  # anything published while we were not listening
                delay = 0.05
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
                    if message is None:
                        continue
                    data = message["data"].decode()
                    if message["channel"] == CANCEL_CHANNEL.encode():
                        if on_cancel(data):
                            log.info("cancel_received", job_id=data)
                    else:
                        on_wake(data if data.startswith("job_") else None)
            except (RedisError, OSError) as exc:
                log.warning("worker_listener_retry", error=type(exc).__name__, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def record_job(self, **finished: Any) -> None:
        """Add a finished job to the shared metrics (``tokenrelay.metrics.record_job``'s
        arguments), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            record_job(pipe, **finished)
            await pipe.execute()

    async def heartbeat(self, worker_id: str) -> None:
        """Say this worker is alive (``/readyz`` wants at least one)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(WORKERS_KEY, {worker_id: now})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 3600)
            await pipe.execute()

    async def workers_alive(self) -> int:
        """Workers that sent a heartbeat lately (``/readyz`` wants one); raises on no Redis."""
        return int(await self.redis.zcount(WORKERS_KEY, time.time() - WORKER_ALIVE_S, "+inf"))
