"""OpenAI-compatible SSE: ``/chat/completions`` (messages) and ``/completions`` (prompt)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from tokenrelay.errors import UpstreamProtocol, UpstreamReportedError
from tokenrelay.settings import UpstreamConfig
from tokenrelay.sse import ServerSentEvent, SSEDecoder
from tokenrelay.upstreams.base import (
    SHAPE_ERRORS,
    Chunk,
    Finish,
    GenerationRequest,
    TextDelta,
    ToolCallDelta,
    Usage,
    clean_text,
    drop_none,
    open_stream,
    parse_json,
    tool_calls_as,
    wrong_shape,
)

MAX_STOP = 4
"""OpenAI takes at most four stop sequences; the worker applies every one regardless."""


class OpenAIUpstream:
    def __init__(self, client: httpx.AsyncClient, config: UpstreamConfig) -> None:
        self.client = client
        self.config = config

    def payload(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = drop_none(
            {
                "model": request.model,
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": request.temperature,
                "top_p": request.top_p,
                "max_tokens": request.max_tokens,
                "seed": request.seed,
                "stop": list(request.stop[:MAX_STOP]) or None,
            }
        )
        if request.messages is not None:
            body["messages"] = tool_calls_as(request.messages, "string")
            if request.tools:
                body["tools"] = request.tools
            return "/chat/completions", body
        body["prompt"] = request.prompt
        return "/completions", body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        path, body = self.payload(request)
        finished = False
        decoder = SSEDecoder()
        async with open_stream(self.client, self.config, path, body) as chunks:
            async for raw in chunks:
                for event in decoder.feed(raw):
                    if event.data == "[DONE]":
                        return
                    for chunk in _interpret(event):
                        finished = finished or isinstance(chunk, Finish)
                        yield chunk
            for event in decoder.flush():
                if event.data == "[DONE]":
                    return
                for chunk in _interpret(event):
                    finished = finished or isinstance(chunk, Finish)
                    yield chunk
        if not finished:
            raise UpstreamProtocol("upstream stream ended before a finish_reason or [DONE]")


def _interpret(event: ServerSentEvent) -> list[Chunk]:
    obj = parse_json(event.data, "data field")
    if not isinstance(obj, dict):
        raise UpstreamProtocol(f"upstream sent data that is not an object: {event.data[:200]!r}")
    if obj.get("error") is not None or event.event == "error":
        raise UpstreamReportedError(_error_text(obj.get("error", obj)))
    try:
        return _chunks(obj)
    except SHAPE_ERRORS as exc:
        raise wrong_shape(event.data, exc) from exc


def _chunks(obj: dict[str, Any]) -> list[Chunk]:
    out: list[Chunk] = []
    for choice in obj.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue  # n > 1 is not supported: the first choice is the job's text
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            out.append(TextDelta(clean_text(str(text))))
        if isinstance(delta, dict):
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                out.append(
                    ToolCallDelta(
                        index=int(call.get("index", 0)),
                        id=call.get("id"),
                        name=function.get("name"),
                        arguments=str(function.get("arguments") or ""),
                    )
                )
        if choice.get("finish_reason"):
            out.append(Finish(str(choice["finish_reason"])))
    usage = obj.get("usage")
    if isinstance(usage, dict):
        out.append(
            Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        )
    return out


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        message = error.get("message", "")
        return f"upstream error ({kind}): {message}" if kind else f"upstream error: {message}"
    return f"upstream error: {error!s}"
