"""A synthetic OpenAI-compatible model endpoint for benchmarks: streams N tokens at a set rate.

A load generator, not a test double: plain asyncio streams, HTTP/1.1 keep-alive, chunked SSE,
as little overhead as possible so the figures measure tokenrelay. The request's ``model``
field says what to stream: ``"tokens=50,rate=20"`` (rate 0 = as fast as possible). Each
delta's text carries the send time (``t=<ns>;``) so a consumer can measure per-delta latency;
with ``stamp=0`` the deltas are ordinary short words instead (for memory figures);
``wait=S`` holds the answer back S seconds.

    python ops/bench/upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import orjson

WORDS = [" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", "."]


def parse_spec(model: str) -> tuple[int, float, bool, float]:
    spec = dict(part.split("=", 1) for part in model.split(",") if "=" in part)
    tokens, rate = int(spec.get("tokens", 50)), float(spec.get("rate", 0))
    return tokens, rate, spec.get("stamp", "1") == "1", float(spec.get("wait", 0))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def frame(obj: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = orjson.loads(await reader.readexactly(length)) if length else {}
            tokens, rate, stamp, wait = parse_spec(str(body.get("model", "")))
            if wait:
                await asyncio.sleep(wait)  # lets listeners gather before the first token
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            base = {"id": "bench", "object": "chat.completion.chunk", "model": "bench"}
            role = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
            writer.write(chunk(frame(role)))
            interval = 1.0 / rate if rate > 0 else 0.0
            start = time.perf_counter()
            for i in range(tokens):
                if interval:
                    delay = start + i * interval - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                # Stamped deltas carry their send time; plain ones look like real tokens.
                text = f"t={time.time_ns()};" if stamp else WORDS[i % len(WORDS)]
                delta = {**base, "choices": [{"index": 0, "delta": {"content": text}}]}
                writer.write(chunk(frame(delta)))
                if interval or i % 64 == 63:
                    await writer.drain()
            finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            usage = {
                **base,
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": tokens},
            }
            writer.write(chunk(frame(finish) + frame(usage) + b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
