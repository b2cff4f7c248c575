"""The Python SDK: submit, follow (resuming on its own), get, cancel and list jobs over HTTP.

``Client`` and ``AsyncClient`` have the same methods; the async ones are coroutines and
``AsyncClient.stream`` is an async iterator. Their errors form one tree::

    ClientError
    ├── APIError                      the API answered an error (``status``, ``type``, ``message``,
    │   │                             ``param``): the subclass names the status
    │   ├── BadRequestError           400  malformed request or event id
    │   ├── AuthenticationError       401  missing or unknown API key
    │   ├── PermissionDeniedError     403
    │   ├── NotFoundError             404  no such job (or another key's, or expired)
    │   ├── ConflictError             409  Idempotency-Key reused with another body, or in use
    │   ├── GoneError                 410  the resume point is older than what is kept
    │   ├── RequestTooLargeError      413
    │   ├── UnprocessableEntityError  422  invalid job or query (``param`` names the field)
    │   ├── RateLimitError            429
    │   └── ServerError               5xx
    │       └── ServiceUnavailableError  503
    ├── APIConnectionError            the API could not be reached, or the connection failed
    │   └── APITimeoutError
    ├── ProtocolError                 the API sent something the wire contract does not allow
    └── StreamDisconnected            a stream's reconnects were exhausted

No message or ``repr`` ever holds the API key.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import quote

import anyio
import httpx
import orjson

from tokenrelay.sse import ServerSentEvent, SSEDecoder
from tokenrelay.wire import TERMINAL_STATUSES, ErrorType, FinishReason, JobStatus

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "DeltaEvent",
    "EndEvent",
    "ErrorEvent",
    "Event",
    "GoneError",
    "Job",
    "JobError",
    "JobHandle",
    "JobList",
    "JobSummary",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "StartEvent",
    "StreamDisconnected",
    "ToolCall",
    "ToolCallEvent",
    "UnprocessableEntityError",
    "Usage",
    "UsageEvent",
]

# stdlib logging, as libraries do: an unconfigured structlog would print to the caller's stdout.
log = logging.getLogger("tokenrelay.client")

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_RECONNECTS = 8
"""Consecutive failed connections a stream tolerates (no event in between) before giving up."""
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
STREAM_READ_TIMEOUT_S = 45.0
"""A stream's read timeout: the API sends a keep-alive after at most 15 s of silence."""


# --- errors -------------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error the SDK raises."""


class APIError(ClientError):
    """The API answered with an error status and the contract's JSON error body."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        param: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, type, message, param)
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f", param {self.param!r}" if self.param else ""
        return f"{self.message} (HTTP {self.status} {self.type}{where})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, type={self.type!r}, "
            f"message={self.message!r}, param={self.param!r})"
        )


class BadRequestError(APIError): ...


class AuthenticationError(APIError): ...


class PermissionDeniedError(APIError): ...


class NotFoundError(APIError): ...


class ConflictError(APIError): ...


class GoneError(APIError): ...


class RequestTooLargeError(APIError): ...


class UnprocessableEntityError(APIError): ...


class RateLimitError(APIError): ...


class ServerError(APIError): ...


class ServiceUnavailableError(ServerError): ...


_ERROR_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


class APIConnectionError(ClientError):
    """The request never got an answer: refused, reset, DNS, TLS."""


class APITimeoutError(APIConnectionError):
    """The request got no answer in time."""


class ProtocolError(ClientError):
    """The API sent something the wire contract does not allow."""


class StreamDisconnected(ClientError):
    """A stream lost its connection and every reconnect since failed; ``__cause__`` is the last.

    ``last_event_id`` is the id of the last event yielded: resume from it later.
    """

    def __init__(self, job_id: str, last_event_id: str | None, attempts: int) -> None:
        super().__init__(
            f"lost the event stream of {job_id!r} after {attempts} failed connections in a row "
            f"(last event {last_event_id!r})"
        )
        self.job_id = job_id
        self.last_event_id = last_event_id
        self.attempts = attempts


# --- jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobHandle:
    """What a submit answers: the job's id and where its events stream."""

    id: str
    status: JobStatus
    events_url: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the model made, merged from its fragments."""

    id: str | None
    name: str | None
    arguments: str  # JSON text, as the model produced it
    type: str = "function"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts; the timings and ``source`` come with the ``usage`` event only."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    ttft_ms: float | None = None
    duration_ms: float | None = None
    source: Literal["upstream", "estimated"] | None = None


@dataclass(frozen=True, slots=True)
class JobError:
    type: ErrorType
    message: str
    retryable: bool
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A job's state, as ``GET /v1/jobs/{id}`` answers it; ``text`` is everything so far."""

    id: str
    status: JobStatus
    upstream: str
    model: str | None
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason | None
    usage: Usage | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_event_id: str | None
    attempt: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobSummary:
    id: str
    status: JobStatus
    upstream: str
    model: str | None
    created_at: datetime
    finished_at: datetime | None
    finish_reason: FinishReason | None
    last_event_id: str | None


@dataclass(frozen=True, slots=True)
class JobList:
    """A page of recent jobs, newest first; pass ``next_before`` as ``before`` for the next."""

    data: tuple[JobSummary, ...]
    has_more: bool
    next_before: str | None = None

    def __iter__(self) -> Iterator[JobSummary]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartEvent:
    id: str
    job_id: str
    upstream: str
    model: str | None
    attempt: int
    type: Literal["start"] = field(default="start", init=False)


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    id: str
    index: int
    text: str
    type: Literal["delta"] = field(default="delta", init=False)


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """A fragment of a tool call; the first of a call has ``call_id`` (the wire's ``id``)."""

    id: str
    index: int
    arguments: str
    call_id: str | None = None
    name: str | None = None
    type: Literal["tool_call"] = field(default="tool_call", init=False)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    ttft_ms: float | None
    duration_ms: float | None
    source: Literal["upstream", "estimated"]
    type: Literal["usage"] = field(default="usage", init=False)


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """What went wrong; ``error_type`` is the wire's ``type`` (``upstream_error``, ...)."""

    id: str
    error_type: ErrorType
    message: str
    retryable: bool
    status: int | None = None
    type: Literal["error"] = field(default="error", init=False)


@dataclass(frozen=True, slots=True)
class EndEvent:
    id: str
    finish_reason: FinishReason
    type: Literal["end"] = field(default="end", init=False)


Event: TypeAlias = StartEvent | DeltaEvent | ToolCallEvent | UsageEvent | ErrorEvent | EndEvent


# --- parsing ------------------------------------------------------------------------------------


def _time(raw: Any) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


def _usage(d: Mapping[str, Any] | None) -> Usage | None:
    if not d:
        return None
    return Usage(
        int(d["prompt_tokens"]),
        int(d["completion_tokens"]),
        int(d["total_tokens"]),
        d.get("ttft_ms"),
        d.get("duration_ms"),
        d.get("source"),
    )


def _job(d: Mapping[str, Any]) -> Job:
    calls = tuple(
        ToolCall(c.get("id"), c["function"].get("name"), c["function"].get("arguments", ""))
        for c in d.get("tool_calls") or ()
    )
    e = d.get("error")
    error = (
        JobError(e["type"], e["message"], bool(e.get("retryable")), e.get("status")) if e else None
    )
    return Job(
        id=d["id"],
        status=d["status"],
        upstream=d["upstream"],
        model=d.get("model"),
        text=d.get("text", ""),
        tool_calls=calls,
        finish_reason=d.get("finish_reason"),
        usage=_usage(d.get("usage")),
        error=error,
        created_at=datetime.fromisoformat(d["created_at"]),
        started_at=_time(d.get("started_at")),
        finished_at=_time(d.get("finished_at")),
        last_event_id=d.get("last_event_id"),
        attempt=int(d.get("attempt", 0)),
        metadata=d.get("metadata") or {},
    )


def _handle(d: Mapping[str, Any]) -> JobHandle:
    return JobHandle(d["id"], d["status"], d["events_url"], datetime.fromisoformat(d["created_at"]))


def _job_list(d: Mapping[str, Any]) -> JobList:
    data = tuple(
        JobSummary(
            id=j["id"],
            status=j["status"],
            upstream=j["upstream"],
            model=j.get("model"),
            created_at=datetime.fromisoformat(j["created_at"]),
            finished_at=_time(j.get("finished_at")),
            finish_reason=j.get("finish_reason"),
            last_event_id=j.get("last_event_id"),
        )
        for j in d["data"]
    )
    return JobList(data, bool(d["has_more"]), d.get("next_before"))


def _event(type_: str, id_: str, d: Mapping[str, Any]) -> Event | None:
    if type_ == "delta":
        return DeltaEvent(id_, int(d["index"]), d["text"])
    if type_ == "start":
        return StartEvent(id_, d["job_id"], d["upstream"], d.get("model"), int(d["attempt"]))
    if type_ == "tool_call":
        return ToolCallEvent(id_, int(d["index"]), d["arguments"], d.get("id"), d.get("name"))
    if type_ == "usage":
        return UsageEvent(
            id_,
            int(d["prompt_tokens"]),
            int(d["completion_tokens"]),
            int(d["total_tokens"]),
            d.get("ttft_ms"),
            d.get("duration_ms"),
            d["source"],
        )
    if type_ == "error":
        return ErrorEvent(id_, d["type"], d["message"], bool(d["retryable"]), d.get("status"))
    if type_ == "end":
        return EndEvent(id_, d["finish_reason"])
    return None  # a type added to the contract later: skipped, but its id still counts


def _json(response: httpx.Response) -> Any:
    if response.is_success:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(
                f"HTTP {response.status_code} with a body that is not JSON"
            ) from exc
    raise _api_error(response)


T = TypeVar("T")


def _parsed(parse: Callable[[Any], T], body: Any) -> T:
    """``parse(body)``, with a body that is not the contract's shape as ``ProtocolError``."""
    try:
        return parse(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"unexpected response body: {exc!r}") from exc


def _api_error(response: httpx.Response) -> APIError:
    status = response.status_code
    try:
        error = orjson.loads(response.content)["error"]
        type_, message, param = str(error["type"]), str(error["message"]), error.get("param")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        # Not the contract's shape (a proxy in between, say): say what came, briefly.
        type_, param = "api_error", None
        message = response.content[:200].decode(errors="replace") or response.reason_phrase
    cls = _ERROR_CLASSES.get(status) or (ServerError if status >= 500 else APIError)
    retry_after = response.headers.get("retry-after", "")
    delay = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
    return cls(status, type_, message, param, retry_after=delay)


def _transport_error(exc: httpx.TransportError) -> APIConnectionError:
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        url = exc.request.url  # scheme, host and port only: a URL's userinfo may be a secret
        port = f":{url.port}" if url.port else ""
        what = f"{url.scheme}://{url.host}{port}: {what}"
    except RuntimeError:  # an error raised with no request attached
        pass
    error = cls(what)
    error.__cause__ = exc
    return error


# --- following a stream -------------------------------------------------------------------------


def _path(job_id: str, suffix: str = "") -> str:
    """A job's URL path; the id is escaped, so no id can reach another endpoint."""
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def _frame_event(sse: ServerSentEvent) -> Event | None:
    return _event(sse.event, sse.id or "", orjson.loads(sse.data))


class _Follow:
    """One resumable follow of a job's events: what both clients' ``stream`` loops share.

    A new connection resumes with ``Last-Event-ID`` set to the last complete event's id; the
    server answers exactly the events after it, so nothing is lost or repeated. Only complete
    frames are dispatched: bytes of a frame a cut left unfinished are dropped with the decoder.
    """

    def __init__(self, job_id: str, after: str | None, max_reconnects: int) -> None:
        self.path = _path(job_id, "/events")
        self.job_id = job_id
        self.last_id = after
        self.max_reconnects = max_reconnects
        self.failures = 0
        self.done = False
        self._decoder = SSEDecoder()

    def headers(self) -> dict[str, str]:
        self._decoder = SSEDecoder()
        headers = {"Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        return headers

    def feed(self, chunk: bytes) -> list[Event]:
        """The events ``chunk`` completes, in order; the last one may be ``end``."""
        events: list[Event] = []
        for sse in self._decoder.feed(chunk):
            if not sse.id:
                raise ProtocolError(f"an event of {self.job_id!r} without an id")
            event = _parsed(_frame_event, sse)
            self.last_id, self.failures = sse.id, 0
            if event is not None:
                events.append(event)
            if sse.event == "end":
                self.done = True
                break
        return events

    def complete(self, job: Job) -> bool:
        """Whether a response that closed without ``end`` closed because nothing is left.

        The API closes at once, with no events, a stream resumed at the job's ``end``; any
        other response that ends without ``end`` was cut short.
        """
        return job.status in TERMINAL_STATUSES and job.last_event_id == self.last_id

    def retry_delay(self, cause: BaseException) -> float:
        """Count a failed connection: the delay before the next, or raise when none is left."""
        if isinstance(cause, APIError) and not (cause.status == 429 or cause.status >= 500):
            raise cause  # 404, 410, ...: another try cannot help
        self.failures += 1
        if self.failures > self.max_reconnects:
            raise StreamDisconnected(self.job_id, self.last_id, self.failures) from cause
        # Exponential, capped, with "equal jitter": listeners cut off together spread out.
        ceiling = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2.0 ** (self.failures - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if isinstance(cause, APIError) and cause.retry_after is not None:
            delay = max(delay, min(cause.retry_after, 30.0))
        log.info(
            "stream of %s dropped (%s); reconnect %d of %d in %.2f s after %s",
            self.job_id,
            cause,
            self.failures,
            self.max_reconnects,
            delay,
            self.last_id,
        )
        return delay


# --- clients ------------------------------------------------------------------------------------


class _Base:
    def __init__(
        self, base_url: str, api_key: str | None, timeout: float | None, max_reconnects: int
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_reconnects = max_reconnects
        self._headers = {"User-Agent": "tokenrelay-python"}
        if api_key:
            if not api_key.isprintable() or not api_key.isascii():
                raise ValueError("api_key must be printable ASCII")  # never echo it
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout)
        read = None if timeout is None else max(timeout, STREAM_READ_TIMEOUT_S)
        self._stream_timeout = httpx.Timeout(timeout, read=read)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @staticmethod
    def _submit_body(
        prompt: str | None,
        messages: Sequence[Mapping[str, Any]] | None,
        upstream: str | None,
        model: str | None,
        options: Mapping[str, Any] | None,
        tools: Sequence[Mapping[str, Any]] | None,
        metadata: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        body = {
            "prompt": prompt,
            "messages": None if messages is None else list(messages),
            "upstream": upstream,
            "model": model,
            "options": None if options is None else dict(options),
            "tools": None if tools is None else list(tools),
            "metadata": None if metadata is None else dict(metadata),
        }
        return {k: v for k, v in body.items() if v is not None}

    @staticmethod
    def _list_params(limit: int, before: str | int | None) -> dict[str, str | int]:
        params: dict[str, str | int] = {"limit": limit}
        if before is not None:
            params["before"] = before
        return params


class Client(_Base):
    """A blocking client of the tokenrelay API. Use it as a context manager, or ``close()`` it.

    ``timeout`` bounds each request (``None``: no limit); a stream's reads wait at least
    45 s, three keep-alive intervals. ``max_reconnects`` is how many failed reconnects in a
    row a stream tolerates before it raises ``StreamDisconnected``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        max_reconnects: int = MAX_RECONNECTS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_reconnects)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc
        return _json(response)

    def submit(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        upstream: str | None = None,
        model: str | None = None,
        options: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobHandle:
        """Enqueue a job: give exactly one of ``prompt`` and ``messages``.

        Raises ``UnprocessableEntityError`` for an invalid job, ``ConflictError`` for an
        ``idempotency_key`` reused with another body, or still being submitted by another
        request (then its ``retry_after`` is set: submit again after it).
        """
        body = self._submit_body(prompt, messages, upstream, model, options, tools, metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        raw = self._request("POST", "/v1/jobs", json=body, headers=headers)
        return _parsed(_handle, raw)

    def get(self, job_id: str) -> Job:
        """The job's state and text so far; ``NotFoundError`` if unknown, expired or not yours."""
        return _parsed(_job, self._request("GET", _path(job_id)))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (a finished one is returned unchanged); its stream ends ``cancelled``."""
        return _parsed(_job, self._request("POST", _path(job_id, "/cancel")))

    def jobs(self, limit: int = 20, *, before: str | int | None = None) -> JobList:
        """The caller's recent jobs, newest first (``limit`` 1 to 100)."""
        body = self._request("GET", "/v1/jobs", params=self._list_params(limit, before))
        return _parsed(_job_list, body)

    def stream(self, job_id: str, after: str | None = None) -> Generator[Event, None, None]:
        """The job's events after ``after`` (an event id, ``"now"``, or None for all), in order.

        Reconnects with ``Last-Event-ID`` when the connection drops, so each event is yielded
        exactly once; ends after the ``end`` event. Raises ``StreamDisconnected`` after
        ``max_reconnects`` failed connections in a row, ``NotFoundError`` / ``GoneError`` /
        ``BadRequestError`` as the API answers. ``close()`` the generator to stop early.
        """
        if after == "now":
            after = self.get(job_id).last_event_id
        follow = _Follow(job_id, after, self.max_reconnects)
        while True:
            try:
                with self._http.stream(
                    "GET", follow.path, headers=follow.headers(), timeout=self._stream_timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        raise _api_error(response)
                    for chunk in response.iter_bytes():
                        yield from follow.feed(chunk)
                        if follow.done:
                            return
                if follow.complete(self.get(job_id)):
                    return
                raise APIConnectionError("the response ended before the end event")
            except httpx.TransportError as exc:
                delay = follow.retry_delay(_transport_error(exc))
            except (APIConnectionError, APIError) as exc:
                delay = follow.retry_delay(exc)
            time.sleep(delay)


class AsyncClient(_Base):
    """The same as ``Client``, for asyncio (or trio): ``async with``, or ``aclose()`` it."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        max_reconnects: int = MAX_RECONNECTS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_reconnects)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc
        return _json(response)

    async def submit(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        upstream: str | None = None,
        model: str | None = None,
        options: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobHandle:
        """See ``Client.submit``."""
        body = self._submit_body(prompt, messages, upstream, model, options, tools, metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        raw = await self._request("POST", "/v1/jobs", json=body, headers=headers)
        return _parsed(_handle, raw)

    async def get(self, job_id: str) -> Job:
        """See ``Client.get``."""
        return _parsed(_job, await self._request("GET", _path(job_id)))

    async def cancel(self, job_id: str) -> Job:
        """See ``Client.cancel``."""
        return _parsed(_job, await self._request("POST", _path(job_id, "/cancel")))

    async def jobs(self, limit: int = 20, *, before: str | int | None = None) -> JobList:
        """See ``Client.jobs``."""
        body = await self._request("GET", "/v1/jobs", params=self._list_params(limit, before))
        return _parsed(_job_list, body)

    async def stream(self, job_id: str, after: str | None = None) -> AsyncGenerator[Event, None]:
        """See ``Client.stream``; ``aclose()`` the generator (or use
        ``contextlib.aclosing``) to stop early and close the connection at once."""
        if after == "now":
            after = (await self.get(job_id)).last_event_id
        follow = _Follow(job_id, after, self.max_reconnects)
        while True:
            try:
                async with self._http.stream(
                    "GET", follow.path, headers=follow.headers(), timeout=self._stream_timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise _api_error(response)
                    async for chunk in response.aiter_bytes():
                        for event in follow.feed(chunk):
                            yield event
                        if follow.done:
                            return
                if follow.complete(await self.get(job_id)):
                    return
                raise APIConnectionError("the response ended before the end event")
            except httpx.TransportError as exc:
                delay = follow.retry_delay(_transport_error(exc))
            except (APIConnectionError, APIError) as exc:
                delay = follow.retry_delay(exc)
            await anyio.sleep(delay)
