"""The API's HTTP/1.1 protocol: uvicorn's httptools one, with a cap on the request head.

httptools (llhttp) has no header size limit: a client could make the server buffer (and copy,
header value chunk by chunk) megabytes of headers before the application sees them. This
protocol counts the bytes of a request head as they arrive and, past the limit, answers the
contract's JSON 400 at once without parsing further; ``api.app.HeaderLimit`` then makes the
limit exact for heads that fit in what was read (and holds under any ASGI server).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.errors import headers_too_large

log = structlog.get_logger("tokenrelay.api")

REQUEST_LINE_ALLOWANCE = 8192
"""Bytes the request line may take beyond the header limit before the protocol refuses a head."""

LINGER_S = 5.0
DRAIN_BYTES = 64 * 1024 * 1024
"""After refusing, what the client is still sending is read and dropped for up to ``LINGER_S``
(or ``DRAIN_BYTES``): a client that writes its whole request before reading then gets the 400,
where closing at once would reset the connection under it."""


class HeadLimitedHttpTools(HttpToolsProtocol):
    """``HttpToolsProtocol`` refusing a request head over ``head_limit`` bytes with a JSON 400.

    Bytes are counted from the start of each request to the end of its headers, per read; the
    count restarts with each request on a kept-alive connection, so a head is cut at most one
    read (a socket buffer) past the limit.
    """

    head_limit: ClassVar[int]
    header_limit: ClassVar[int]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_bytes = 0
        self._in_head = True
        self._drain_left: int | None = None  # set once the request was refused
        self._linger: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._drain_left is not None:
            self._drain_left -= len(data)
            if self._drain_left <= 0:
                self.transport.close()
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.head_limit:
            self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def _refuse(self) -> None:
        if self.transport.is_closing():
            return
        self._drain_left = DRAIN_BYTES
        log.warning("request_headers_too_large", limit=self.header_limit, read=self._head_bytes)
        # A response still being sent for an earlier pipelined request must not be cut into.
        if self.cycle is None or self.cycle.response_complete:
            body = headers_too_large(self.header_limit).body
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                head.append(b"%s: %s\r\n" % (name, value))
            head.append(b"content-type: application/json\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + bytes(body))
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)


def http_protocol(max_header_bytes: int) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (``http=``) for a header limit of ``max_header_bytes``
    (``TOKENRELAY_MAX_HEADER_BYTES``)."""
    return type(
        "HeadLimitedHttpTools",
        (HeadLimitedHttpTools,),
        {
            "head_limit": max_header_bytes + REQUEST_LINE_ALLOWANCE,
            "header_limit": max_header_bytes,
        },
    )
