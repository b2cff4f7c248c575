"""A lean asyncio HTTP/1.1 client for benchmarks: POST JSON, and read an SSE response as it
arrives (chunked), so the measuring side costs as little CPU as possible."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        data = orjson.dumps(body)
        self.writer.write(
            b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        status, headers = await self._head()
        return status, orjson.loads(await self._body(headers))

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self._send_get(path, headers)
        status, head = await self._head()
        return status, await self._body(head)

    def _send_get(self, path: str, headers: dict[str, str] | None) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{extra}\r\n".encode())

    async def _head(self) -> tuple[int, dict[bytes, bytes]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _body(self, headers: dict[bytes, bytes]) -> bytes:
        if b"content-length" in headers:
            return await self.reader.readexactly(int(headers[b"content-length"]))
        out = b""
        async for part in self._chunks():
            out += part
        return out

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def sse(
        self, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[tuple[float, bytes]]:
        """Yield ``(perf_counter at arrival, event block)`` for each SSE event until the end."""
        self._send_get(path, headers)
        status, head = await self._head()
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {await self._body(head)!r}")
        buffer = b""
        async for part in self._chunks():
            now = time.perf_counter()
            buffer += part
            while (cut := buffer.find(b"\n\n")) >= 0:
                block, buffer = buffer[:cut], buffer[cut + 2 :]
                if not block.startswith(b":"):
                    yield now, block


def event_type(block: bytes) -> bytes:
    start = block.index(b"event: ") + 7
    return block[start : block.index(b"\n", start)]


def event_id(block: bytes) -> str:
    return block[4 : block.index(b"\n")].decode()


def sent_ns(block: bytes) -> int | None:
    """The upstream's send time carried in a delta's text (``t=<ns>;``)."""
    at = block.find(b'"t=')
    if at < 0:
        return None
    return int(block[at + 3 : block.index(b";", at)])
