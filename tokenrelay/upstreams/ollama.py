"""Ollama's NDJSON streaming API: ``/api/chat`` (messages) and ``/api/generate`` (prompt)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from tokenrelay.errors import UpstreamProtocol, UpstreamReportedError
from tokenrelay.settings import UpstreamConfig
from tokenrelay.upstreams._lines import LineDecoder
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


class OllamaUpstream:
    def __init__(self, client: httpx.AsyncClient, config: UpstreamConfig) -> None:
        self.client = client
        self.config = config

    def payload(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        options = drop_none(
            {
                "temperature": request.temperature,
                "top_p": request.top_p,
                "num_predict": request.max_tokens,
                "seed": request.seed,
                "stop": list(request.stop) or None,
            }
        )
        body: dict[str, Any] = {"model": request.model, "stream": True}
        if options:
            body["options"] = options
        if request.messages is not None:
            body["messages"] = tool_calls_as(request.messages, "object")
            if request.tools:
                body["tools"] = request.tools
            return "/api/chat", body
        body["prompt"] = request.prompt
        return "/api/generate", body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        path, body = self.payload(request)
        calls = 0
        decoder = LineDecoder()
        async with open_stream(self.client, self.config, path, body) as chunks:
            async for raw in chunks:
                for line in decoder.feed(raw):
                    out, done = _interpret(line, calls)
                    for chunk in out:
                        calls += isinstance(chunk, ToolCallDelta)
                        yield chunk
                    if done:
                        return
            for line in decoder.flush():
                out, done = _interpret(line, calls)
                for chunk in out:
                    yield chunk
                if done:
                    return
        raise UpstreamProtocol("upstream stream ended without a final object with done: true")


def _interpret(line: str, calls_before: int) -> tuple[list[Chunk], bool]:
    """The chunks of one NDJSON line, and whether it was the final one."""
    obj = parse_json(line, "line")
    if not isinstance(obj, dict):
        raise UpstreamProtocol(f"upstream sent a line that is not an object: {line[:200]!r}")
    if "error" in obj:
        raise UpstreamReportedError(f"upstream error: {obj['error']!s}")
    try:
        return _chunks(obj, calls_before), bool(obj.get("done"))
    except SHAPE_ERRORS as exc:
        raise wrong_shape(line, exc) from exc


def _chunks(obj: dict[str, Any], calls_before: int) -> list[Chunk]:
    """The chunks of one NDJSON object; ``calls_before`` tool calls came in earlier ones."""
    out: list[Chunk] = []
    message = obj.get("message") or {}
    text = message.get("content") if "message" in obj else obj.get("response")
    if text:
        out.append(TextDelta(clean_text(str(text))))
    index = calls_before
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        out.append(
            ToolCallDelta(
                index=index,
                id=call.get("id") or f"call_{index}",
                name=function.get("name"),
                arguments=arguments
                if isinstance(arguments, str)
                else orjson.dumps(arguments).decode(),
            )
        )
        index += 1
    if obj.get("done"):
        prompt_tokens, completion_tokens = obj.get("prompt_eval_count"), obj.get("eval_count")
        if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
            out.append(Usage(prompt_tokens, completion_tokens))
        reason = obj.get("done_reason") or "stop"
        out.append(Finish("tool_calls" if index else str(reason)))
    return out
