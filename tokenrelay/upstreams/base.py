"""What every upstream adapter yields and takes, and the HTTP plumbing they share."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import httpx
import orjson

from tokenrelay.errors import UpstreamProtocol, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from tokenrelay.settings import UpstreamConfig

MAX_ERROR_BODY = 64 * 1024
MAX_DRAIN = 64 * 1024
DRAIN_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call: the first of a call carries ``id`` and ``name``."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str  # "stop" | "length" | "tool_calls"


Chunk: TypeAlias = TextDelta | ToolCallDelta | Usage | Finish


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a job asks of a model endpoint, independent of wire format."""

    model: str | None
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    tools: list[dict[str, Any]] = field(default_factory=list)


class Upstream(Protocol):
    """A model endpoint of one wire format.

    ``stream`` yields chunks as they arrive; closing the iterator (``aclose``) closes the
    upstream request. Failures raise ``UpstreamError`` subclasses, never httpx exceptions.
    """

    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]: ...


def tool_calls_as(messages: list[dict[str, Any]], arguments: str) -> list[dict[str, Any]]:
    """``messages`` with assistant tool calls in one wire format's shape, whichever a client
    sent: ``arguments="string"`` (OpenAI: JSON text, an ``id`` and ``type`` per call) or
    ``"object"`` (Ollama: the parsed object). Multi-turn tool use then works against either
    kind of upstream. Messages without tool calls pass unchanged."""
    out = []
    for index, message in enumerate(messages):
        calls = message.get("tool_calls")
        if not isinstance(calls, list) or not calls:
            out.append(message)
            continue
        converted = []
        for n, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                converted.append(call)
                continue
            function = dict(call["function"])
            args = function.get("arguments")
            if arguments == "string" and not isinstance(args, str):
                function["arguments"] = orjson.dumps(args if args is not None else {}).decode()
            elif arguments == "object" and isinstance(args, str):
                try:
                    function["arguments"] = orjson.loads(args) if args else {}
                except orjson.JSONDecodeError:
                    pass  # not JSON: leave it for the upstream to judge
            call = {**call, "function": function}
            if arguments == "string":
                call.setdefault("id", f"call_{index}_{n}")
                call.setdefault("type", "function")
            converted.append(call)
        out.append({**message, "tool_calls": converted})
    return out


def headers_for(config: UpstreamConfig) -> dict[str, str]:
    headers = {"accept": "text/event-stream, application/x-ndjson, application/json"}
    if config.api_key is not None:
        headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
    return headers


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Replace lone surrogates (legal in JSON escapes, not in UTF-8) with U+FFFD, one each.

    JSON decoding already joined every proper pair, so any surrogate left is a lone one.
    """
    return _SURROGATE.sub("\ufffd", text)


def drop_none(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if value is not None}


def parse_json(raw: str, what: str) -> Any:
    """Parse an upstream's JSON; lone surrogate escapes (legal JSON, which orjson refuses)
    are accepted and later replaced by ``clean_text``."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise UpstreamProtocol(
                f"upstream sent a {what} that is not JSON: {raw[:200]!r}"
            ) from exc


SHAPE_ERRORS = (AttributeError, TypeError, ValueError, KeyError, IndexError)
"""What reading valid JSON of the wrong shape raises (a string where an object belongs, a
null count): adapters turn these into ``UpstreamProtocol``, as they promise only
``UpstreamError``."""


def wrong_shape(raw: str, exc: Exception) -> UpstreamProtocol:
    error = UpstreamProtocol(f"upstream sent JSON of an unexpected shape: {raw[:200]!r}")
    error.__cause__ = exc
    return error


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, config: UpstreamConfig, path: str, payload: dict[str, Any]
) -> AsyncIterator[AsyncIterator[bytes]]:
    """POST ``payload`` and yield the response body's byte chunks, errors translated.

    Raises ``UpstreamStatus`` for an error status (with up to 64 KiB of its body),
    ``UpstreamUnavailable`` / ``UpstreamTimeout`` for transport failures, also mid-body.
    """
    # Reads are timed by the caller (first-token and idle timeouts, which know whether a token
    # came); httpx times connecting, writing and waiting for a pooled connection.
    timeout = httpx.Timeout(
        connect=config.connect_s, read=None, write=config.connect_s, pool=config.connect_s
    )
    streaming = False
    try:
        async with client.stream(
            "POST",
            f"{config.url}{path}",
            content=orjson.dumps(payload),
            headers={**headers_for(config), "content-type": "application/json"},
            timeout=timeout,
        ) as response:
            if response.status_code >= 400:
                error_body = b""
                async for part in response.aiter_raw():
                    error_body += part
                    if len(error_body) > MAX_ERROR_BODY:
                        break
                raise UpstreamStatus(
                    response.status_code,
                    _error_message(error_body),
                    retry_after=_retry_after(response.headers.get("retry-after")),
                )
            streaming = True
            chunks = response.aiter_raw()
            # httpx errors raised while the adapter reads ``chunks`` are thrown in here,
            # at the yield, and translated below like those of connecting.
            yield chunks
            # The adapter saw the end of the stream ([DONE] / done: true). Read what is left
            # (the chunked terminator) so the connection goes back to the pool for reuse
            # instead of being closed: a new connection per job costs a handshake.
            # Failing to do so costs only that reuse: the answer is already complete.
            drained = 0
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    async for part in chunks:
                        drained += len(part)
                        if drained > MAX_DRAIN:
                            break
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"upstream timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        what = "connection lost mid-stream" if streaming else "connection failed"
        raise UpstreamUnavailable(f"upstream {what} ({type(exc).__name__})") from exc


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(body: bytes) -> str:
    """The message of an OpenAI- or Ollama-style JSON error body, else the body's start."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return body[:500].decode("utf-8", "replace")
