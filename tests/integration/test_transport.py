"""The upstreams' httpx transport on aiohttp: its errors are the httpx errors the adapters
translate, as httpx's own transport raised them. Real sockets on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tokenrelay.errors import UpstreamStatus, UpstreamUnavailable
from tokenrelay.processes import free_port
from tokenrelay.settings import UpstreamConfig
from tokenrelay.upstreams.base import open_stream
from tokenrelay.upstreams.transport import new_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    await reader.readexactly(length)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_all(url: str) -> list[bytes]:
    config = UpstreamConfig(kind="openai", base_url=url)
    async with new_client() as client, asyncio.timeout(10):
        async with open_stream(client, config, "/x", {"a": 1}) as chunks:
            return [part async for part in _parts(chunks)]


async def _parts(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for part in chunks:
        yield part


async def test_a_streamed_body_arrives_whole_and_in_order() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(HEAD)
        for i in range(50):
            writer.write(_chunk(b"data: %d\n\n" % i))
            if i % 10 == 0:
                await writer.drain()
                await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    async with server:
        parts = await _read_all(url)
    assert b"".join(parts) == b"".join(b"data: %d\n\n" % i for i in range(50))
    assert len(parts) < 50, "whole network reads, not one chunk per chunk-encoded piece"


async def test_a_connection_lost_mid_body_is_upstream_unavailable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(HEAD + _chunk(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    server, url = await _serve(handler)
    async with server:
        with pytest.raises(UpstreamUnavailable, match="connection lost mid-stream") as info:
            await _read_all(url)
    assert isinstance(info.value.__cause__, httpx.TransportError)
    assert not isinstance(info.value.__cause__, httpx.TimeoutException)


async def test_a_refused_connection_is_upstream_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable, match="connection failed") as info:
        await _read_all(f"http://127.0.0.1:{free_port()}")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_an_error_status_keeps_its_body_message() -> None:
    body = b'{"error": {"message": "slow down"}}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    async with server:
        with pytest.raises(UpstreamStatus) as info:
            await _read_all(url)
    assert info.value.status == 429 and "slow down" in str(info.value)
    assert info.value.retry_after == 3
