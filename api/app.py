"""The ASGI application: ``create_app(settings)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tokenrelay
from api import errors
from api.compat.aisdk import router as aisdk_router
from api.compat.durable import ProtocolHeaders
from api.compat.durable import router as durable_router
from api.compat.ollama import router as ollama_router
from api.compat.openai import router as openai_router
from api.compat.responses import router as responses_router
from api.errors import error_response, headers_too_large
from api.jobs import router
from api.listing import router as listing_router
from api.ops import router as ops_router
from api.state import Relay
from tokenrelay.settings import Settings

log = structlog.get_logger("tokenrelay.api")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether announced or streamed.

    A body without ``Content-Length`` (chunked) is read here, up to the limit, and handed on
    whole: the refusal can then be a 413 from here rather than a parse error further in.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body is larger than {self.limit} bytes")
        await response(scope, receive, send)


class HeaderLimit:
    """Refuse requests whose headers total more than ``limit`` bytes (names, values, and the
    four bytes of ``": "`` and CRLF each) with the contract's JSON 400.

    The API's HTTP protocol (``api.server``) already cuts a head far over the limit before it is
    read whole; this makes the limit exact, and holds under any ASGI server.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                log.warning("request_headers_too_large", limit=self.limit, size=size)
                await headers_too_large(self.limit)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_key_list:
            log.warning("auth_disabled", hint="set TOKENRELAY_API_KEYS to require bearer keys")
        app.state.relay = await Relay.open(settings)
        log.info("api_started", upstreams=sorted(settings.upstreams))
        try:
            yield
        finally:
            await app.state.relay.aclose()

    app = FastAPI(
        title="tokenrelay",
        version=tokenrelay.__version__,
        summary="Background LLM generations, streamed resumably to many clients.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(router)
    app.include_router(ops_router)
    app.include_router(listing_router)
    app.include_router(openai_router)
    app.include_router(ollama_router)
    app.include_router(aisdk_router)
    app.include_router(responses_router)
    app.include_router(durable_router)

    page = (Path(__file__).parent / "static" / "index.html").read_bytes()

    @app.get("/", include_in_schema=False)
    async def demo() -> Response:
        """The demo page: submit, watch, drop and resume, a second listener, cancel."""
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/healthz", include_in_schema=True, tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origin_list:  # outside the body limit: its 413 reaches the page readable
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origin_list),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # answers the headers a preflight asks for, Authorization too
            expose_headers=["X-Tokenrelay-Job", "Location", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(ProtocolHeaders)  # outside CORS: the protocol answers its own preflights
    app.add_middleware(HeaderLimit, limit=settings.max_header_bytes)  # the outer one: first
    return app
