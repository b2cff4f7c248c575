"""Incremental, byte-exact decoder for newline-delimited streams such as Ollama's NDJSON."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["LineDecoder", "aiter_lines"]


class LineDecoder:
    """Split a byte stream into text lines, however the bytes are chunked.

    Lines end in ``\\n`` or ``\\r\\n``; the terminator is not returned. Blank and
    whitespace-only lines are dropped, because upstreams send them as keep-alives.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        # Holds only the unfinished last line, so it never contains b"\n".
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        """Buffer ``data`` and return the lines it completed."""
        buf = self._buf
        # The bytes already buffered hold no newline, so search only the new ones:
        # rescanning a long unfinished line on every feed would be quadratic.
        search_from = len(buf)
        buf += data
        lines: list[str] = []
        start = 0
        while (end := buf.find(b"\n", search_from)) != -1:
            _append_line(lines, buf[start:end])
            start = search_from = end + 1
        # Dropping a bytearray's prefix is cheap in CPython (it moves a start offset).
        del buf[:start]
        return lines

    def flush(self) -> list[str]:
        """At end of stream, return the final line if it lacked a newline."""
        lines: list[str] = []
        _append_line(lines, self._buf)
        self._buf.clear()
        return lines


def _append_line(lines: list[str], raw: bytes | bytearray) -> None:
    # Decoding whole lines only keeps multi-byte characters that straddle
    # chunk boundaries intact; newline bytes never occur inside one.
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if raw and not raw.isspace():
        lines.append(raw.decode("utf-8", errors="replace"))


async def aiter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the lines of a stream of byte chunks, including an unterminated last line."""
    decoder = LineDecoder()
    async for chunk in chunks:
        for line in decoder.feed(chunk):
            yield line
    for line in decoder.flush():
        yield line
