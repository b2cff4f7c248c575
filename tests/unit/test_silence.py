"""The worker's lazy first-token / idle timer (``worker.pump.Silence``): the deadlines of an
``asyncio.timeout`` rescheduled on every token, without a timer operation per token."""

from __future__ import annotations

import asyncio

import pytest

from worker.pump import Silence


async def test_no_first_token_times_out_after_first_s() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        async with Silence(0.2, 5.0):
            await asyncio.sleep(5)
    assert 0.19 <= loop.time() - t0 < 1.0


async def test_tokens_keep_it_alive_and_silence_after_the_last_ends_it() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Silence(0.2, 0.3) as silence:
            for _ in range(12):  # 0.6 s of tokens: longer than both timeouts
                await asyncio.sleep(0.05)
                silence.last = loop.time()
            last = loop.time()
            await asyncio.sleep(5)
    took = loop.time() - last
    assert 0.29 <= took < 1.0, f"timed out {took:.2f} s after the last token, not 0.3"


async def test_it_never_fires_once_the_block_is_left() -> None:
    async with Silence(0.1, 0.1):
        pass
    await asyncio.sleep(0.3)  # no stray cancel arrives here


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def run() -> None:
        async with Silence(5.0, 5.0):
            await asyncio.sleep(5)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
