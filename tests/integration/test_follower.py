"""The one follower, ``api.reading.follow``, against a real Valkey: a real hub (EventLog and
node clients) and events appended by the worker's EventWriter. Each event once, in order, from
any resume point, however late or slow the listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import pytest

from api.reading import events_of, follow
from api.state import Relay
from tokenrelay.fanout import Batch
from tokenrelay.fanout.hub import EMPTY, MAX_QUEUED_BATCHES
from tokenrelay.keys import job_key
from tokenrelay.settings import Settings
from tokenrelay.store.events import EventWriter, JobStream
from tokenrelay.wire import ZERO_ID, DeltaEvent, EndEvent, EventId, StartEvent

KEEPALIVE_S = 0.2
OWNER = "owner-1"

Follower = AsyncGenerator[list[Batch] | None, None]


@pytest.fixture
async def relay(redis_db: str) -> AsyncIterator[Relay]:
    relay = await Relay.open(Settings(redis_url=redis_db, keepalive_s=KEEPALIVE_S))
    try:
        yield relay
    finally:
        await relay.aclose()


@pytest.fixture
async def writer(relay: Relay) -> AsyncIterator[EventWriter]:
    writer = EventWriter(relay.redis, maxlen=100_000, safety_ttl_s=600, retry_s=5.0)
    writer.start()
    try:
        yield writer
    finally:
        await writer.aclose()


async def running_job(relay: Relay, writer: EventWriter, job_id: str) -> JobStream:
    """A job as a worker has it once claimed: running, owned, no event yet."""
    fields = {"id": job_id, "status": "running", "owner": OWNER, "nevents": "0"}
    await relay.redis.hset(job_key(job_id), mapping=fields)  # type: ignore[misc]
    stream = writer.stream(job_id, OWNER, 0)
    stream.publish(StartEvent("", job_id, "test", None, 1))
    await stream.flush()
    return stream


async def deltas(stream: JobStream, first: int, count: int) -> str:
    """Publish deltas ``first`` .. ``first + count - 1``; the id of the last."""
    for i in range(first, first + count):
        stream.publish(DeltaEvent("", i, f"d{i} "), text=f"d{i} ")
    return await stream.flush()


async def end(stream: JobStream) -> str:
    fields = {"status": "succeeded", "finish_reason": "stop"}
    return await stream.finish(EndEvent("", "stop"), fields, 600)


async def collect(follower: Follower, *, within: float = 10.0) -> list[tuple[str, str]]:
    """Everything the follower yields until it is done: (id, type) of each event."""
    got: list[tuple[str, str]] = []
    async with asyncio.timeout(within), contextlib.aclosing(follower):
        async for batches in follower:
            if batches is not None:
                got += [(event.id, event.type) for event in events_of(batches)]
    return got


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    """Until ``check()`` holds (polled: the hub has no event to wait on for this)."""
    for _ in range(int(within / 0.002)):
        if check():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"not within {within} s")


async def listening(relay: Relay, count: int) -> None:
    """Until ``count`` listeners are on the hub (their replay is done)."""
    await until(lambda: relay.hub.listeners >= count)


def assert_exact(got: list[tuple[str, str]], after: EventId = ZERO_ID) -> None:
    """Each id once, increasing, starting right after ``after``; an ``end`` last."""
    ids = [EventId.parse(id_) for id_, _ in got]
    assert ids == sorted(set(ids)), "repeated or out of order"
    assert all(id_ > after for id_ in ids)
    assert got[-1][1] == "end"


async def stored(relay: Relay, job_id: str) -> list[tuple[str, str]]:
    return [(event.id, event.type) for event in await relay.events.read(job_id, ZERO_ID)]


async def test_replay_then_live(relay: Relay, writer: EventWriter) -> None:
    stream = await running_job(relay, writer, "job_replaylive")
    await deltas(stream, 0, 3)
    follower = asyncio.create_task(collect(follow(relay, "job_replaylive", ZERO_ID)))
    await listening(relay, 1)  # the replay is done: what follows comes through the hub
    await deltas(stream, 3, 3)
    await end(stream)
    got = await follower
    assert got == await stored(relay, "job_replaylive")
    assert [type_ for _, type_ in got] == ["start"] + ["delta"] * 6 + ["end"]
    assert relay.hub.listeners == 0 and relay.hub.streams == 0


async def test_resume_after_every_id(relay: Relay, writer: EventWriter) -> None:
    stream = await running_job(relay, writer, "job_resume")
    await deltas(stream, 0, 5)
    await end(stream)
    everything = await stored(relay, "job_resume")
    for i, (id_, _) in enumerate([("0-0", ""), *everything]):
        got = await collect(follow(relay, "job_resume", EventId.parse(id_)))
        assert got == everything[i:], f"resumed after {id_}"


async def test_resume_after_every_id_while_live(relay: Relay, writer: EventWriter) -> None:
    """Followers resuming mid-job get the rest through the hub, then stop at its end."""
    stream = await running_job(relay, writer, "job_resumelive")
    await deltas(stream, 0, 4)
    so_far = await stored(relay, "job_resumelive")
    followers = [
        asyncio.create_task(collect(follow(relay, "job_resumelive", EventId.parse(id_))))
        for id_, _ in so_far
    ]
    await listening(relay, len(followers))
    await deltas(stream, 4, 4)
    await end(stream)
    everything = await stored(relay, "job_resumelive")
    for i, follower in enumerate(followers):
        assert await follower == everything[i + 1 :]


async def test_late_joiners_while_events_stream(relay: Relay, writer: EventWriter) -> None:
    """Listeners join at every moment of a fast stream, behind the hub's cursor or not: each
    sees every event once."""
    stream = await running_job(relay, writer, "job_late")
    first = asyncio.create_task(collect(follow(relay, "job_late", ZERO_ID)))
    await listening(relay, 1)
    joiners: list[asyncio.Task[list[tuple[str, str]]]] = []
    for round_ in range(20):
        await deltas(stream, round_ * 10, 10)
        joiners.append(asyncio.create_task(collect(follow(relay, "job_late", ZERO_ID))))
        await asyncio.sleep(0)
    await end(stream)
    everything = await stored(relay, "job_late")
    assert len(everything) == 202
    assert await first == everything
    for joiner in joiners:
        assert await joiner == everything


async def test_a_late_joiner_behind_the_hubs_cursor_fills_the_gap(
    relay: Relay, writer: EventWriter
) -> None:
    """A subscription behind the cursor the hub already handed out fetches the gap itself."""
    stream = await running_job(relay, writer, "job_gap")
    async with relay.hub.subscribe("job_gap", ZERO_ID) as early:
        await deltas(stream, 0, 3)
        async with asyncio.timeout(5):
            seen: list[str] = []
            while len(seen) < 4:
                seen += [e.id for b in await early.next(5.0) or [] for e in b.events]
        async with relay.hub.subscribe("job_gap", ZERO_ID) as late:
            got = await late.next(1.0)
            assert got is not None
            assert [e.id for b in got for e in b.events] == seen


async def test_a_slow_listener_whose_queue_overflows_loses_nothing(
    relay: Relay, writer: EventWriter
) -> None:
    stream = await running_job(relay, writer, "job_slow")
    fast = asyncio.create_task(collect(follow(relay, "job_slow", ZERO_ID), within=60))
    await listening(relay, 1)
    others = set(relay.hub._subs["job_slow"])
    slow = follow(relay, "job_slow", ZERO_ID)
    async with contextlib.aclosing(slow):
        assert await anext(slow) is not None  # the replay: start
        first_live = asyncio.create_task(anext(slow))  # now on the hub, then left unread
        await listening(relay, 2)
        (slow_sub,) = relay.hub._subs["job_slow"] - others
        await deltas(stream, 0, 1)
        async with asyncio.timeout(5):
            assert await first_live is not None
        # One batch a delta: each is handed out before the next is appended.
        for i in range(1, MAX_QUEUED_BATCHES + 50):
            last = EventId.parse(await deltas(stream, i, 1))
            await until(lambda: relay.hub._cursors["job_slow"] >= last)  # noqa: B023
        assert slow_sub._queue[0][1] is EMPTY  # it overflowed: its backlog was dropped
        assert len(slow_sub._queue) < MAX_QUEUED_BATCHES
        await end(stream)
        rest = await collect(slow)
    everything = await stored(relay, "job_slow")
    assert rest == everything[2:]
    assert await fast == everything
    assert_exact(rest, EventId.parse(everything[1][0]))


async def test_a_job_already_ended_or_gone_stops_at_once(relay: Relay, writer: EventWriter) -> None:
    stream = await running_job(relay, writer, "job_ended")
    end_id = await end(stream)
    assert await collect(follow(relay, "job_ended", EventId.parse(end_id)), within=1) == []
    assert await collect(follow(relay, "job_nothere", ZERO_ID), within=1) == []
    assert relay.hub.listeners == 0


async def test_silence_yields_none_for_a_keepalive(relay: Relay, writer: EventWriter) -> None:
    stream = await running_job(relay, writer, "job_quiet")
    follower = follow(relay, "job_quiet", ZERO_ID)
    async with contextlib.aclosing(follower), asyncio.timeout(5):
        assert await anext(follower) is not None  # start, replayed
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await anext(follower) is None
        assert KEEPALIVE_S * 0.9 <= loop.time() - began < KEEPALIVE_S * 5
        assert await anext(follower) is None  # and again, while the job stays silent
        await deltas(stream, 0, 1)
        got = await anext(follower)
        assert got is not None
        assert [e.type for e in events_of(got)] == ["delta"]
    assert relay.hub.listeners == 0  # closing the follower ends its subscription
