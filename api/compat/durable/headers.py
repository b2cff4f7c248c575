"""The headers the Durable Streams protocol asks of every response under its prefix
(nosniff, a cross-origin resource policy, CORS for browsers), and its CORS preflight."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.compat.durable.protocol import ALLOWED, EXPOSED

PREFIX = "/v1/stream/"
METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"
ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": EXPOSED,
}


class ProtocolHeaders:
    """Adds the protocol's headers to responses under ``/v1/stream/`` (unless set already)
    and answers their preflights itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            headers = MutableHeaders(headers=ALWAYS)
            headers["Access-Control-Allow-Methods"] = METHODS
            headers["Access-Control-Allow-Headers"] = ALLOWED
            headers["Access-Control-Max-Age"] = "600"
            await send({"type": "http.response.start", "status": 204, "headers": headers.raw})
            await send({"type": "http.response.body", "body": b""})
            return

        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ALWAYS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, add)
