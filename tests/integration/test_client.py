"""The Python SDK (sync and async) against real processes: typed jobs and events, errors, resume."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest

from tests.integration.helpers import collect
from tests.support.system import RelaySystem
from tests.upstream_server import SCENARIOS, Scenario, UpstreamServer
from tokenrelay.client import (
    APIConnectionError,
    AsyncClient,
    BadRequestError,
    Client,
    DeltaEvent,
    EndEvent,
    Event,
    Job,
    NotFoundError,
    StartEvent,
    StreamDisconnected,
    ToolCall,
    ToolCallEvent,
    UnprocessableEntityError,
    UsageEvent,
)
from tokenrelay.processes import free_port

HELLO = "".join(SCENARIOS["hello"].pieces)
SECRET_KEY = "sk-client-secret-never-shown"  # auth is off on `system`: the API ignores it


@pytest.fixture
async def aclient(system: RelaySystem) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(system.base_url, api_key=SECRET_KEY, timeout=10) as c:
        yield c


@pytest.fixture
def client(system: RelaySystem) -> Iterator[Client]:
    with Client(system.base_url, api_key=SECRET_KEY, timeout=10) as c:
        yield c


async def read_all(client: AsyncClient, job_id: str, after: str | None = None) -> list[Event]:
    async with asyncio.timeout(15):
        return [event async for event in client.stream(job_id, after)]


async def read_all_sync(client: Client, job_id: str, after: str | None = None) -> list[Event]:
    async with asyncio.timeout(15):
        return await asyncio.to_thread(lambda: list(client.stream(job_id, after)))


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, DeltaEvent))


async def test_async_submit_stream_get(aclient: AsyncClient, system: RelaySystem) -> None:
    handle = await aclient.submit(messages=[{"role": "user", "content": "hi"}], model="hello")
    assert handle.status == "queued" and handle.events_url == f"/v1/jobs/{handle.id}/events"
    assert isinstance(handle.created_at, datetime)
    events = await read_all(aclient, handle.id)
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as raw:
        wire = await collect(raw, handle.id)
    assert [(e.id, e.type) for e in events] == [(e.id, e.type) for e in wire]
    assert events[0] == StartEvent(events[0].id, handle.id, "openai", "hello", 1)
    assert [e.index for e in events if isinstance(e, DeltaEvent)] == list(range(5))
    (usage,) = [e for e in events if isinstance(e, UsageEvent)]
    assert usage.source == "upstream" and usage.total_tokens > 0 and usage.ttft_ms is not None
    assert events[-1] == EndEvent(events[-1].id, "stop")
    job = await aclient.get(handle.id)
    assert isinstance(job, Job)
    assert (job.status, job.finish_reason, job.text) == ("succeeded", "stop", text_of(events))
    assert job.text == HELLO
    assert job.last_event_id == events[-1].id and job.attempt == 1
    assert job.usage is not None and job.usage.total_tokens == usage.total_tokens
    assert job.created_at <= job.started_at <= job.finished_at  # type: ignore[operator]
    # Resuming after any event gives exactly the rest; after the end, nothing, at once.
    assert await read_all(aclient, handle.id, after=events[2].id) == events[3:]
    assert await read_all(aclient, handle.id, after=events[-1].id) == []
    assert await read_all(aclient, handle.id, after="now") == []


async def test_sync_submit_stream_get(client: Client) -> None:
    handle = await asyncio.to_thread(client.submit, "hi", model="hello", metadata={"user": "42"})
    events = await read_all_sync(client, handle.id)
    assert isinstance(events[0], StartEvent) and isinstance(events[-1], EndEvent)
    job = await asyncio.to_thread(client.get, handle.id)
    assert job.text == text_of(events) == HELLO
    assert job.metadata == {"user": "42"} and job.last_event_id == events[-1].id


async def test_typed_tool_call_events(aclient: AsyncClient) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    handle = await aclient.submit(
        messages=[{"role": "user", "content": "weather?"}], model="tools", tools=tools
    )
    events = await read_all(aclient, handle.id)
    fragments = [e for e in events if isinstance(e, ToolCallEvent)]
    firsts = [e for e in fragments if e.call_id is not None]
    assert [(e.index, e.call_id, e.name) for e in firsts] == [
        (0, "call_1", "get_weather"),
        (1, "call_2", "get_time"),
    ]
    assert events[-1] == EndEvent(events[-1].id, "tool_calls")
    job = await aclient.get(handle.id)
    expected = SCENARIOS["tools"].tool_calls
    assert job.tool_calls == tuple(ToolCall(t.id, t.name, t.arguments) for t in expected)


async def test_cancel_sync_and_async(
    aclient: AsyncClient, client: Client, upstream: UpstreamServer
) -> None:
    upstream.add("sdk_cancel", Scenario(pieces=[f"c{i} " for i in range(200)], delay_s=0.03))
    for cancel in (aclient.cancel, lambda job_id: asyncio.to_thread(client.cancel, job_id)):
        handle = await aclient.submit("x", model="sdk_cancel")
        seen: list[Event] = []
        async with asyncio.timeout(15):
            async for event in aclient.stream(handle.id):
                seen.append(event)
                if isinstance(event, DeltaEvent) and event.index == 2:
                    job = await cancel(handle.id)
                    assert job.id == handle.id and job.status in ("running", "cancelled")
        assert seen[-1] == EndEvent(seen[-1].id, "cancelled")
        job = await aclient.get(handle.id)
        assert job.status == "cancelled" and job.text == text_of(seen)
        assert await cancel(handle.id) == job, "cancelling a finished job changes nothing"


async def test_errors_are_typed_and_never_show_the_key(
    aclient: AsyncClient, client: Client
) -> None:
    unknown = "job_AAAAAAAAAAAAAAAAAAAAAA"
    errors: list[BaseException] = []
    with pytest.raises(NotFoundError) as not_found:
        await aclient.get(unknown)
    assert (not_found.value.status, not_found.value.type) == (404, "not_found_error")
    errors.append(not_found.value)
    with pytest.raises(NotFoundError) as sync_not_found:
        await asyncio.to_thread(client.cancel, unknown)
    errors.append(sync_not_found.value)
    with pytest.raises(NotFoundError) as stream_not_found:
        await read_all(aclient, unknown)  # at once: a 404 is not retried
    errors.append(stream_not_found.value)
    for crafted in ("../upstreams", "x?after=now", "%2e%2e"):
        with pytest.raises(NotFoundError):  # an id never addresses another endpoint
            await aclient.get(crafted)

    with pytest.raises(UnprocessableEntityError) as both:
        await aclient.submit("p", messages=[{"role": "user", "content": "c"}], model="hello")
    assert both.value.status == 422 and "exactly one" in both.value.message
    with pytest.raises(UnprocessableEntityError) as bad_upstream:
        await asyncio.to_thread(client.submit, "p", upstream="nope")
    assert bad_upstream.value.param == "upstream"
    with pytest.raises(UnprocessableEntityError) as bad_option:
        await aclient.submit("p", model="m", options={"temperature": "hot"})
    assert bad_option.value.param == "options.temperature"
    errors += [both.value, bad_upstream.value, bad_option.value]

    handle = await aclient.submit("p", model="hello")
    await read_all(aclient, handle.id)
    with pytest.raises(BadRequestError) as bad_id:
        await read_all(aclient, handle.id, after="not-an-id")
    assert bad_id.value.param == "Last-Event-ID"
    errors.append(bad_id.value)

    async with AsyncClient(
        f"http://127.0.0.1:{free_port()}", api_key=SECRET_KEY, max_reconnects=1
    ) as dead:
        with pytest.raises(APIConnectionError) as refused:
            await dead.get(unknown)
        errors.append(refused.value)
        with pytest.raises(StreamDisconnected) as gave_up:
            await read_all(dead, unknown)
        assert gave_up.value.attempts == 2
        errors.append(gave_up.value)

    for error in errors:
        shown = str(error) + repr(error) + "".join(traceback.format_exception(error))
        assert SECRET_KEY not in shown
    assert SECRET_KEY not in repr(aclient) + repr(client)


# --- resuming through a connection that is cut ----------------------------------------------


@dataclass
class CuttingProxy:
    """A TCP proxy to the API that cuts its first ``len(cuts)`` connections and passes the rest.

    Connection i is reset inside the JSON of its ``cuts[i]``-th ``data:`` line, so the client
    holds a frame cut in half (``0``: right after the response's first byte).
    """

    target_port: int
    cuts: list[int]
    port: int = 0
    connections: int = 0
    cut: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def cut_point(received: bytes, frame: int) -> int | None:
        """Where to cut ``received`` for ``frame``, or None while it has not come yet."""
        if frame == 0:
            return 1
        pos = -1
        for _ in range(frame):
            pos = received.find(b"\ndata: {", pos + 1)
            if pos < 0:
                return None
        cut = pos + len(b"\ndata: {") + 3  # three bytes into the event's JSON
        return cut if cut < len(received) else None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        frame = self.cuts[self.connections] if self.connections < len(self.cuts) else None
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            received = b""
            while data := await server_r.read(65536):
                cut = None if frame is None else self.cut_point(received + data, frame)
                if cut is not None:
                    client_w.write((received + data)[len(received) : cut])
                    await client_w.drain()
                    self.cut += 1
                    return
                client_w.write(data)
                await client_w.drain()
                received += data

        pump = asyncio.create_task(upstream())
        try:
            await downstream()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            pump.cancel()
            client_w.transport.abort()  # a reset, not a clean close: the connection just dies
            server_w.transport.abort()
            self._tasks.discard(task)


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_stream_resumes_through_cut_connections_exactly_once(
    system: RelaySystem, upstream: UpstreamServer, flavour: str
) -> None:
    name = f"sdk_cut_{flavour}"
    pieces = [f"p{i} " for i in range(40)]
    upstream.add(name, Scenario(pieces=pieces, delay_s=0.03))
    async with AsyncClient(system.base_url, timeout=10) as direct:
        handle = await direct.submit("x", model=name)
    async with CuttingProxy(system.port, cuts=[3, 2, 4]) as proxy:
        if flavour == "async":
            async with AsyncClient(proxy.url, timeout=10) as via_proxy:
                got = await read_all(via_proxy, handle.id)
        else:
            with Client(proxy.url, timeout=10) as sync_via_proxy:
                got = await read_all_sync(sync_via_proxy, handle.id)
    async with AsyncClient(system.base_url, timeout=10) as direct:
        fresh = await read_all(direct, handle.id)
    assert proxy.cut == 3, "the connection was cut mid-stream, three times"
    assert proxy.connections == 4, "the SDK reconnected after each cut"
    assert got == fresh
    assert len({e.id for e in got}) == len(got)
    assert text_of(got) == "".join(pieces)
    assert isinstance(got[-1], EndEvent)


async def test_stream_gives_up_after_bounded_reconnects(system: RelaySystem) -> None:
    async with AsyncClient(system.base_url, timeout=10) as direct:
        handle = await direct.submit("x", model="hello")
        await read_all(direct, handle.id)
    async with CuttingProxy(system.port, cuts=[0] * 100) as proxy:
        async with AsyncClient(proxy.url, timeout=10, max_reconnects=3) as via_proxy:
            with pytest.raises(StreamDisconnected) as gave_up:
                await read_all(via_proxy, handle.id)
    assert gave_up.value.attempts == 4 and gave_up.value.last_event_id is None
    assert proxy.connections == 4
    assert isinstance(gave_up.value.__cause__, APIConnectionError)
