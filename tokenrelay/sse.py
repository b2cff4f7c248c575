"""Incremental, byte-exact Server-Sent Events decoder (WHATWG event stream interpretation).

Neutral core: the upstream adapters decode their endpoints' streams with it and the SDK decodes
the API's; the standard library only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent", "aiter_sse"]

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A
_CR_BYTE = b"\r"
_LINE_END = re.compile(rb"\r\n?|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``id`` and ``retry`` are the stream's last-event-ID and reconnection time as of
    this event: both persist across events, as the spec's state does, so a ``retry``
    sent in a data-less block still reaches the consumer on the next event.
    ``id`` is ``None`` until the stream sets one, and ``""`` once the stream resets it.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turn a byte stream into events, however the bytes are chunked.

    Follows the spec except at end of stream: :meth:`flush` treats an unterminated
    last line as complete and dispatches a pending event, since some upstreams end
    with ``data: [DONE]`` and no newline.
    """

    __slots__ = ("_buf", "_data", "_event", "_first_line", "_last_id", "_retry", "_skip_lf")

    def __init__(self) -> None:
        # Holds only the unfinished last line, so it never contains CR or LF.
        self._buf = bytearray()
        # A CR ending the previous feed has already ended a line; an LF opening
        # the next feed belongs to that same CRLF and must not end another.
        self._skip_lf = False
        self._first_line = True
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Buffer ``data`` and return the events it completed."""
        if not data:
            # Keep the CR/LF pairing state for the next non-empty feed.
            return []
        if not (self._first_line or self._skip_lf) and _CR_BYTE not in data:
            return self._feed_lf(data)
        buf = self._buf
        start = 0
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == _LF:
                start = 1  # the buffer is empty after a CR, so this indexes into data
        # The bytes already buffered hold no line end, so search only the new ones:
        # rescanning a long unfinished line on every feed would be quadratic.
        search_from = max(start, len(buf))
        buf += data
        events: list[ServerSentEvent] = []
        for match in _LINE_END.finditer(buf, search_from):
            self._process_line(buf[start : match.start()], events)
            start = match.end()
        # A lone CR ends a line at once (waiting for the next byte would stall the
        # event it dispatches), so remember to swallow an LF that follows it.
        self._skip_lf = start == len(buf) and buf[-1] == _CR
        # Dropping a bytearray's prefix is cheap in CPython (it moves a start offset).
        del buf[:start]
        return events

    def _feed_lf(self, data: bytes) -> list[ServerSentEvent]:
        """The common case, a whole network read at a time: LF line ends only, past the
        first line. The complete lines are decoded in one call and split as text: UTF-8 never
        has an LF byte inside a character, so this is the same text as decoding line by line
        (an invalid sequence before an LF is replaced alike)."""
        end = data.rfind(b"\n")
        if end < 0:
            self._buf += data
            return []
        buf = self._buf
        if buf:
            buf += data[: end + 1]
            text = buf[:-1].decode("utf-8", errors="replace")
            buf.clear()
        else:
            text = data[:end].decode("utf-8", errors="replace")
        if end + 1 < len(data):
            buf += data[end + 1 :]
        events: list[ServerSentEvent] = []
        for line in text.split("\n"):
            self._line(line, events)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """At end of stream, finish the last line and dispatch any pending event."""
        events: list[ServerSentEvent] = []
        if self._buf:
            self._process_line(self._buf, events)
            self._buf.clear()
        self._skip_lf = False
        self._dispatch(events)
        return events

    def _process_line(self, raw: bytes | bytearray, events: list[ServerSentEvent]) -> None:
        if self._first_line:
            self._first_line = False
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
        # Decoding whole lines only keeps multi-byte characters that straddle
        # chunk boundaries intact; CR and LF bytes never occur inside one.
        self._line(raw.decode("utf-8", errors="replace"), events)

    def _line(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            # isdigit() alone admits non-ASCII digits such as "٣", which int() would parse.
            if value.isascii() and value.isdigit():
                # int() refuses over ~4300 digits; such a value is garbage, not a crash.
                with contextlib.suppress(ValueError):
                    self._retry = int(value)

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        if self._data:
            events.append(
                ServerSentEvent(
                    data="\n".join(self._data),
                    event=self._event or "message",
                    id=self._last_id,
                    retry=self._retry,
                )
            )
        # The id and retry are stream state, not per-event, so they are kept.
        self._data = []
        self._event = ""


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Yield the events of a stream of byte chunks, including one left pending at EOF."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.flush():
        yield event
