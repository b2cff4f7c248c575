"""A real local HTTP server streaming scripted replies in Ollama, OpenAI and generic SSE formats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from types import TracebackType
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Payload = dict[str, Any] | str  # a JSON object, or the literal SSE sentinel "[DONE]"

ROUTES: dict[str, tuple[str, str]] = {
    "/api/chat": ("ollama", "chat"),
    "/api/generate": ("ollama", "generate"),
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/completions": ("openai", "completions"),
    "/v1/generate/stream": ("sse", "generate"),
}
ARGUMENT_FRAGMENT = 7  # OpenAI tool-call arguments are sent in fragments of this many characters
SPLIT_SIZES = (1, 5, 2, 11, 3, 17)  # split_writes: cut every frame at these cycling sizes, too


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON string


@dataclass
class Scenario:
    pieces: list[str] = field(default_factory=lambda: ["Hello", " world"])
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" | "length" | "tool_calls"
    prompt_tokens: int = 7
    delay_s: float = 0.0
    first_delay_s: float = 0.0
    tail_delay_s: float = 0.0  # a pause after the tool calls, before the end
    http_status: int = 200
    error_after: int | None = None
    drop_after: int | None = None
    send_usage: bool = True
    crlf: bool = False
    comments: bool = False
    split_writes: bool = False
    multiline_data: bool = False
    no_final_newline: bool = False
    error_type: str = "server_error"  # mid-stream error type (openai and sse kinds)
    malformed_after: int | None = None  # after this many pieces send a line that is not JSON
    stall_after: int | None = None  # go silent for `stall_s` after this many pieces
    stall_s: float = 60.0
    fail_first: int = 0  # the first N requests for this scenario answer `fail_status`
    fail_status: int = 500
    retry_after: str | None = None  # a Retry-After header on error answers


@dataclass
class RecordedRequest:
    path: str
    body: Any  # the parsed JSON body, None when it was not JSON
    headers: dict[str, str]  # lower-case names
    scenario: str


HELLO = ["Hello! ", "héllo ", "wörld ", "😀 ", "日本語"]
SCENARIOS: dict[str, Scenario] = {
    "hello": Scenario(pieces=HELLO),
    "long": Scenario(pieces=[f"w{i} " for i in range(200)]),
    "tools": Scenario(
        pieces=["Let me check ", "the weather."],
        tool_calls=[
            ToolCall("call_1", "get_weather", '{"location": "Berlin", "unit": "celsius"}'),
            ToolCall("call_2", "get_time", '{"timezone": "Europe/Berlin", "format": "24h"}'),
        ],
        finish_reason="tool_calls",
    ),
    "tools_slow": Scenario(  # `tools`, silent for a while mid-call: to drop mid-tool-call
        pieces=["Let me check ", "the weather."],
        tool_calls=[
            ToolCall("call_1", "get_weather", '{"location": "Berlin", "unit": "celsius"}'),
            ToolCall("call_2", "get_time", '{"timezone": "Europe/Berlin", "format": "24h"}'),
        ],
        finish_reason="tool_calls",
        tail_delay_s=2.0,
    ),
    "slow": Scenario(pieces=[f"s{i} " for i in range(50)], delay_s=0.05),
    "stall": Scenario(pieces=HELLO, first_delay_s=60.0),
    "error_mid": Scenario(pieces=HELLO, error_after=3),
    "http500": Scenario(http_status=500),
    "http429": Scenario(http_status=429),
    "drop": Scenario(pieces=HELLO, drop_after=3),
    "weird": Scenario(
        pieces=HELLO,
        crlf=True,
        comments=True,
        split_writes=True,
        multiline_data=True,
        no_final_newline=True,
    ),
    "stopword": Scenario(
        pieces=["Hello th", "ere E", "N", "D and more", *[f" after{i}" for i in range(20)]],
        delay_s=0.05,
    ),
    "length": Scenario(pieces=HELLO, finish_reason="length"),
    "no_usage": Scenario(pieces=HELLO, send_usage=False),
}


class _Drop(Exception):
    """Raised inside the app so uvicorn closes the connection mid-body."""


class _Abort(Exception):
    """The client went away or the server is stopping."""


def _quiet_drops(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], _Drop))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _split_json(obj: dict[str, Any]) -> tuple[str, str]:
    """Two halves of one JSON object, cut between tokens, so joining them with "\\n" stays valid."""
    items = [f"{_dumps(k)}:{_dumps(v)}" for k, v in obj.items()]
    if len(items) < 2:
        return "{", ",".join(items) + "}"
    half = len(items) // 2
    return "{" + ",".join(items[:half]) + ",", ",".join(items[half:]) + "}"


def _split_bytes(data: bytes) -> list[bytes]:
    """Cut at cycling small sizes, inside every multi-byte UTF-8 character and inside every CRLF."""
    cuts: set[int] = set()
    pos = 0
    for i in range(len(data)):
        pos += SPLIT_SIZES[i % len(SPLIT_SIZES)]
        if pos >= len(data):
            break
        cuts.add(pos)
    for i, byte in enumerate(data):
        if byte >= 0xC0 or byte == 0x0D:  # a UTF-8 lead byte, or the CR of a CRLF
            cuts.add(i + 1)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def _frame(payload: Payload, sc: Scenario, sse: bool) -> str:
    eol = "\r\n" if sc.crlf else "\n"
    text = payload if isinstance(payload, str) else _dumps(payload)
    if not sse:
        return (eol if sc.comments else "") + text + eol
    if isinstance(payload, str) or not sc.multiline_data:
        lines = [f"data: {text}"]
    else:
        first, second = _split_json(payload)
        lines = [f"data: {first}", *([": ping"] if sc.comments else []), f"data:{second}"]
    if sc.comments:
        lines = [": ping", "", *lines]
    return eol.join(lines) + eol + eol


class _Encoder:
    """Turns a scenario's steps into the payloads of one wire format."""

    def __init__(self, endpoint: str, body: dict[str, Any], sc: Scenario, name: str) -> None:
        self.endpoint, self.sc, self.name = endpoint, sc, name
        self.model = str(body.get("model") or "mock-model")
        self.count = 0  # text pieces emitted so far
        self.started = time.monotonic_ns()

    def head(self) -> list[Payload]:
        return []

    def piece(self, text: str, last: bool) -> list[Payload]:
        raise NotImplementedError

    def tools(self) -> list[Payload]:
        return []

    def tail(self) -> list[Payload]:
        raise NotImplementedError

    def error(self) -> list[Payload]:
        raise NotImplementedError

    def error_message(self) -> str:
        return f"scenario {self.name!r} failed after {self.count} pieces"


class _Ollama(_Encoder):
    def _obj(self, **fields: Any) -> dict[str, Any]:
        return {"model": self.model, "created_at": _now_iso(), **fields}

    def _content(self, text: str) -> dict[str, Any]:
        if self.endpoint == "chat":
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def piece(self, text: str, last: bool) -> list[Payload]:
        self.count += 1
        return [self._obj(**self._content(text), done=False)]

    def tools(self) -> list[Payload]:
        if self.endpoint != "chat" or not self.sc.tool_calls:
            return []
        calls = [
            {"function": {"name": c.name, "arguments": json.loads(c.arguments)}}
            for c in self.sc.tool_calls
        ]
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        return [self._obj(message=message, done=False)]

    def tail(self) -> list[Payload]:
        total = max(time.monotonic_ns() - self.started, 1000)
        load, prompt_eval = total // 10, total // 10
        extra: dict[str, Any] = {}
        if self.endpoint == "generate":
            extra["context"] = list(range(1, self.sc.prompt_tokens + self.count + 1))
        final = self._obj(
            **self._content(""),
            done=True,
            done_reason="length" if self.sc.finish_reason == "length" else "stop",
            **extra,
            total_duration=total,
            load_duration=load,
            prompt_eval_count=self.sc.prompt_tokens,
            prompt_eval_duration=prompt_eval,
            eval_count=self.count,
            eval_duration=total - load - prompt_eval,
        )
        return [final]

    def error(self) -> list[Payload]:
        return [{"error": self.error_message()}]


class _OpenAI(_Encoder):
    def __init__(self, endpoint: str, body: dict[str, Any], sc: Scenario, name: str) -> None:
        super().__init__(endpoint, body, sc, name)
        chat = endpoint == "chat"
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        chunk = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return chunk

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self.endpoint == "chat":
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "text": delta.get("content", ""), "finish_reason": finish}

    def head(self) -> list[Payload]:
        if self.endpoint != "chat":
            return []
        return [self._chunk([self._choice({"role": "assistant", "content": ""})])]

    def piece(self, text: str, last: bool) -> list[Payload]:
        self.count += 1
        return [self._chunk([self._choice({"content": text})])]

    def tools(self) -> list[Payload]:
        if self.endpoint != "chat":
            return []
        chunks: list[Payload] = []
        for index, call in enumerate(self.sc.tool_calls):
            function = {"name": call.name, "arguments": ""}
            first = {"index": index, "id": call.id, "type": "function", "function": function}
            chunks.append(self._chunk([self._choice({"tool_calls": [first]})]))
            for at in range(0, len(call.arguments), ARGUMENT_FRAGMENT):
                fragment = call.arguments[at : at + ARGUMENT_FRAGMENT]
                later = {"index": index, "function": {"arguments": fragment}}
                chunks.append(self._chunk([self._choice({"tool_calls": [later]})]))
        return chunks

    def tail(self) -> list[Payload]:
        chunks: list[Payload] = [self._chunk([self._choice({}, self.sc.finish_reason)])]
        if self.include_usage and self.sc.send_usage:
            usage = {
                "prompt_tokens": self.sc.prompt_tokens,
                "completion_tokens": self.count,
                "total_tokens": self.sc.prompt_tokens + self.count,
            }
            chunks.append(self._chunk([], usage))
        return [*chunks, "[DONE]"]

    def error(self) -> list[Payload]:
        message = self.error_message()
        return [
            {"error": {"message": message, "type": self.sc.error_type, "param": None, "code": None}}
        ]


class _GenericSSE(_Encoder):
    def __init__(self, endpoint: str, body: dict[str, Any], sc: Scenario, name: str) -> None:
        super().__init__(endpoint, body, sc, name)
        self.id = "gen_" + secrets.token_hex(8)
        self.text = ""

    def _event(self, delta: str, last: bool) -> dict[str, Any]:
        self.text += delta
        event = {"id": self.id, "text": self.text, "delta": delta}
        if last:
            event["finishReason"] = self.sc.finish_reason
        return event

    def piece(self, text: str, last: bool) -> list[Payload]:
        self.count += 1
        return [self._event(text, last)]

    def tail(self) -> list[Payload]:
        final = [] if self.sc.pieces else [self._event("", True)]
        return [*final, "[DONE]"]

    def error(self) -> list[Payload]:
        return [{"error": {"type": self.sc.error_type, "message": self.error_message()}}]


ENCODERS: dict[str, type[_Encoder]] = {"ollama": _Ollama, "openai": _OpenAI, "sse": _GenericSSE}


def _http_error_body(kind: str, status: int, name: str) -> dict[str, Any]:
    message = f"scenario {name!r} answers HTTP {status}"
    if kind == "ollama":
        return {"error": message}
    if status == 429:
        kind_type, code = "rate_limit_error", "rate_limit_exceeded"
    elif status >= 500:
        kind_type, code = "server_error", None
    else:
        kind_type, code = "invalid_request_error", None
    if kind == "sse":
        return {"error": {"type": kind_type, "message": message}}
    return {"error": {"message": message, "type": kind_type, "param": None, "code": code}}


class _Call:
    """One in-flight streaming response."""

    def __init__(self, send: Send, sc: Scenario, sse: bool) -> None:
        self.send, self.sc, self.sse = send, sc, sse
        self.abort = asyncio.Event()
        self.gone = False  # the client went away (as opposed to the server stopping)

    def check(self) -> None:
        if self.abort.is_set():
            raise _Abort

    async def pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.abort.wait(), seconds)
        self.check()

    async def emit(self, payloads: list[Payload], last: bool = False) -> None:
        for i, payload in enumerate(payloads):
            text = _frame(payload, self.sc, self.sse)
            if last and i == len(payloads) - 1 and self.sc.no_final_newline:
                text = text.rstrip("\r\n")
            data = text.encode()
            for part in _split_bytes(data) if self.sc.split_writes else [data]:
                self.check()
                await self.send({"type": "http.response.body", "body": part, "more_body": True})
                if self.sc.split_writes:
                    await asyncio.sleep(0.001)
        self.check()

    async def send_raw(self, data: bytes) -> None:
        self.check()
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.abort.set()


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, body: Any, retry_after: str | None = None) -> None:
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": _dumps(body).encode()})


class UpstreamServer:
    """Serves SCENARIOS (or the given ones) on 127.0.0.1 from a uvicorn thread with its own loop."""

    def __init__(self, scenarios: dict[str, Scenario] | None = None) -> None:
        self._scenarios = dict(SCENARIOS if scenarios is None else scenarios)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._disconnects: list[str] = []
        self._served: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._calls: set[_Call] = set()  # touched only on the server's loop
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- public API ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> list[str]:
        """A snapshot of the scenario names whose client went away mid-response."""
        with self._lock:
            return list(self._disconnects)

    def peak(self, name: str) -> int:
        """The most responses of scenario ``name`` that were streaming at the same time."""
        with self._lock:
            return self._peak.get(name, 0)

    def add(self, name: str, scenario: Scenario) -> None:
        with self._lock:
            self._scenarios[name] = scenario

    def url(self, kind: str) -> str:
        """The base URL a worker upstream of this kind is configured with."""
        return f"{self.base_url}/v1" if kind == "openai" else self.base_url

    def wait_for_disconnect(self, name: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while name not in self.disconnects:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("UpstreamServer already started")
        logging.getLogger("uvicorn.error").addFilter(_quiet_drops)
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=0,
            http="h11",
            interface="asgi3",
            proxy_headers=False,
            ws="none",
            lifespan="off",
            log_config=None,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._stopping = False
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("UpstreamServer did not start")
            time.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        thread, server, loop = self._thread, self._server, self._loop
        if thread is None or server is None:
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._abort_all)
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._thread = self._server = self._loop = None

    def __enter__(self) -> UpstreamServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the server side ----------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    def _abort_all(self) -> None:
        self._stopping = True
        for call in self._calls:
            call.abort.set()

    def _pick(self, body: Any) -> str:
        if not isinstance(body, dict):
            return "hello"
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        candidates = [
            body.get("model"),
            body.get("prompt"),
            last.get("content") if isinstance(last, dict) else None,
        ]
        with self._lock:
            for candidate in candidates:
                if isinstance(candidate, str) and candidate.strip() in self._scenarios:
                    return candidate.strip()
        return "hello"

    async def _app(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        if raw is None:
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        name = self._pick(body)
        with self._lock:
            self._requests.append(RecordedRequest(scope["path"], body, headers, name))
            scenario = self._scenarios[name]
            served = self._served.get(name, 0)
            self._served[name] = served + 1
        route = ROUTES.get(scope["path"])
        if route is None or scope["method"] != "POST":
            await _send_json(send, 404, _http_error_body("openai", 404, name))
        elif not isinstance(body, dict):
            await _send_json(send, 400, _http_error_body(route[0], 400, name))
        elif scenario.http_status != 200 or served < scenario.fail_first:
            status = scenario.http_status if scenario.http_status != 200 else scenario.fail_status
            error = _http_error_body(route[0], status, name)
            await _send_json(send, status, error, scenario.retry_after)
        else:
            await self._stream(route, body, scenario, name, receive, send)

    async def _stream(
        self,
        route: tuple[str, str],
        body: dict[str, Any],
        sc: Scenario,
        name: str,
        receive: Receive,
        send: Send,
    ) -> None:
        kind, endpoint = route
        encoder = ENCODERS[kind](endpoint, body, sc, name)
        call = _Call(send, sc, sse=kind != "ollama")
        content_type = (
            b"application/x-ndjson" if kind == "ollama" else b"text/event-stream; charset=utf-8"
        )
        headers = [(b"content-type", content_type), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._calls.add(call)
        with self._lock:
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
            self._peak[name] = max(self._peak.get(name, 0), self._in_flight[name])
        watcher = asyncio.create_task(call.watch(receive))
        try:
            if self._stopping:
                call.abort.set()
            await self._script(call, encoder)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except _Abort:
            if not call.gone:
                raise _Drop("server stopping") from None
            with self._lock:
                self._disconnects.append(name)
        finally:
            with self._lock:
                self._in_flight[name] -= 1
            self._calls.discard(call)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    @staticmethod
    async def _script(call: _Call, encoder: _Encoder) -> None:
        sc, n = call.sc, len(call.sc.pieces)
        cuts = [c for c in (sc.error_after, sc.drop_after) if c is not None]
        cut = min(min(cuts), n) if cuts else None
        await call.pause(sc.first_delay_s)
        await call.emit(encoder.head())
        for i, piece in enumerate(sc.pieces):
            if i == cut:
                break
            if i == sc.stall_after:
                await call.pause(sc.stall_s)
            if i == sc.malformed_after:
                await call.send_raw(b"data: {not json\n\n" if call.sse else b"{not json\n")
                return
            await call.pause(sc.delay_s)
            await call.emit(encoder.piece(piece, last=i == n - 1 and cut is None))
        if cut is not None:
            if sc.drop_after is not None and min(sc.drop_after, n) == cut:
                raise _Drop(f"dropping the connection after {cut} pieces")
            await call.emit(encoder.error(), last=True)
            return
        await call.emit(encoder.tools())
        await call.pause(sc.tail_delay_s)
        await call.emit(encoder.tail(), last=True)
