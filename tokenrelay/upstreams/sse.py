"""The generic ``/v1/generate/stream`` SSE API: text deltas, ``finishReason``, error events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from tokenrelay.errors import UpstreamProtocol, UpstreamReportedError
from tokenrelay.settings import UpstreamConfig
from tokenrelay.sse import aiter_sse
from tokenrelay.upstreams.base import (
    Chunk,
    Finish,
    GenerationRequest,
    TextDelta,
    clean_text,
    drop_none,
    open_stream,
    parse_json,
)


class SSEUpstream:
    def __init__(self, client: httpx.AsyncClient, config: UpstreamConfig) -> None:
        self.client = client
        self.config = config

    def payload(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        return "/v1/generate/stream", drop_none(
            {
                "prompt": request.prompt,
                "maxTokens": request.max_tokens,
                "temperature": request.temperature,
            }
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        path, body = self.payload(request)
        text_so_far = ""
        finished = done = False
        async with open_stream(self.client, self.config, path, body) as chunks:
            async for event in aiter_sse(chunks):
                if event.data == "[DONE]":
                    done = True
                    break
                obj = parse_json(event.data, "data field")
                if not isinstance(obj, dict):
                    raise UpstreamProtocol(
                        f"upstream sent data that is not an object: {event.data[:200]!r}"
                    )
                error = obj.get("error")
                if error is not None or event.event == "error":
                    raise UpstreamReportedError(_error_text(error if error is not None else obj))
                delta = obj.get("delta")
                if delta is None and isinstance(obj.get("text"), str):
                    # Only the running text was sent: the delta is what it grew by.
                    full = str(obj["text"])
                    delta = full[len(text_so_far) :] if full.startswith(text_so_far) else None
                    if delta is None:
                        raise UpstreamProtocol(
                            "upstream running text does not extend the previous one"
                        )
                if delta:
                    text_so_far += str(delta)
                    yield TextDelta(clean_text(str(delta)))
                if obj.get("finishReason"):
                    finished = True
                    yield Finish(_finish_reason(str(obj["finishReason"])))
        if not done and not finished:
            raise UpstreamProtocol("upstream stream ended before a finishReason or [DONE]")
        if not finished:
            yield Finish("stop")


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        kind, message = error.get("type", "error"), error.get("message", "")
        return f"upstream error ({kind}): {message}"
    return f"upstream error: {error!s}"


def _finish_reason(raw: str) -> str:
    return {"max_tokens": "length", "end_turn": "stop"}.get(raw, raw)
