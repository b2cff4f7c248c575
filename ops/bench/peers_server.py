"""One peer of tokenrelay behind uvicorn, used the way its README shows, for ops/bench/peers.py.

Runs from .venv-peers (the peers need redis>=6.2, tokenrelay's arq redis<6), one process per
peer. ``GET /stream/{id}?model=SPEC`` follows generation ``id``; the first request for an id
starts it: a producer that streams the synthetic upstream (ops/bench/upstream.py, model SPEC
such as ``tokens=600,rate=200``) with httpx and turns each delta into one SSE message whose
data is ``{"index": n, "text": "t=<ns>;"}``, as tokenrelay's delta events are.

- ``resumable-stream``: ``ctx.resumable_stream(id, producer, skip_characters=resume_at)`` in a
  StreamingResponse; resume with ``?resume_at=CHARS`` (characters already read). A finished
  stream answers 422, as the README does.
- ``resumable-sse``: ``streamer.stream(session_id=id, generator=..., last_id=...)`` in
  sse-starlette's EventSourceResponse; resume with the ``Last-Event-ID`` header.

    .venv-peers/bin/python ops/bench/peers_server.py resumable-sse --port 9201 \\
        --redis-url redis://127.0.0.1:6379/0 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Header, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

PACKAGES = [
    "resumable-stream", "resumable-sse", "redis", "hiredis", "fastapi", "starlette",
    "sse-starlette", "uvicorn", "httptools", "uvloop", "httpx",
]  # fmt: skip


async def deltas(http: httpx.AsyncClient, model: str) -> AsyncIterator[str]:
    """The upstream's deltas, each as one JSON message (``{"index", "text"}``)."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "bench"}]}
    index = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in orjson.loads(line[6:]).get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    yield orjson.dumps({"index": index, "text": text}).decode()
                    index += 1


def resumable_stream_app(redis_url: str, http: httpx.AsyncClient) -> FastAPI:
    from resumable_stream import RedisPublisher, RedisSubscriber, create_resumable_stream_context

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The README's create_resumable_stream_context(redis_url=...) raises TypeError in 0.2.0
        # (the options dataclass has no redis_url), and the context connects with
        # asyncio.create_task, so not at import time either: the README's "custom Redis
        # clients" form, with its own RedisPublisher and RedisSubscriber, connected here.
        publisher, subscriber = RedisPublisher(redis_url), RedisSubscriber(redis_url)
        await publisher.connect()
        await subscriber.connect()
        state["ctx"] = create_resumable_stream_context(publisher=publisher, subscriber=subscriber)
        yield
        await http.aclose()
        await subscriber.close()
        await publisher.close()

    app = FastAPI(lifespan=lifespan)

    async def messages(model: str) -> AsyncIterator[str]:
        async for data in deltas(http, model):
            yield f"data: {data}\n\n"
        yield "event: end\ndata: {}\n\n"

    def producer(model: str) -> Callable[[], AsyncIterator[str]]:
        return lambda: messages(model)

    @app.get("/healthz")
    async def healthz() -> Response:
        await state["ctx"].has_existing_stream("healthz")
        return PlainTextResponse("ok")

    @app.get("/stream/{stream_id}")
    async def stream(stream_id: str, model: str = "", resume_at: int | None = None) -> Response:
        body = await state["ctx"].resumable_stream(
            stream_id, producer(model), skip_characters=resume_at
        )
        if body is None:
            return PlainTextResponse("Stream is already done", status_code=422)
        return StreamingResponse(body, media_type="text/event-stream")

    return app


def resumable_sse_app(redis_url: str, http: httpx.AsyncClient) -> FastAPI:
    import redis.asyncio as redis
    from resumable_sse.factory import get_streamer
    from sse_starlette.sse import EventSourceResponse

    # Every listener holds a pooled connection in XREAD BLOCK: redis-py's default pool (100)
    # would refuse the 101st listener with MaxConnectionsError.
    client = redis.Redis.from_url(redis_url, max_connections=5000)
    streamer = get_streamer(backend="redis", redis_client=client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> Response:
        await client.ping()
        return PlainTextResponse("ok")

    @app.get("/stream/{session_id}")
    async def stream(
        session_id: str,
        model: str = "",
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        return EventSourceResponse(
            streamer.stream(
                session_id=session_id, generator=deltas(http, model), last_id=last_event_id or "0"
            )
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("peer", choices=["resumable-stream", "resumable-sse", "versions"])
    parser.add_argument("--port", type=int, default=9201)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--upstream", default="http://127.0.0.1:9100")
    args = parser.parse_args()
    if args.peer == "versions":
        found = {}
        for name in PACKAGES:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[name] = importlib.metadata.version(name)
        print(json.dumps(found))
        return
    http = httpx.AsyncClient(base_url=args.upstream, timeout=httpx.Timeout(60.0))
    make = resumable_stream_app if args.peer == "resumable-stream" else resumable_sse_app
    uvicorn.run(
        make(args.redis_url, http),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
