"""The SDK's errors, one tree, and how an HTTP answer or a transport failure becomes one of them.

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

import httpx
import orjson

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientError",
    "ConflictError",
    "GoneError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "StreamDisconnected",
    "UnprocessableEntityError",
    "api_error",
    "connection_error",
]


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


def api_error(response: httpx.Response) -> APIError:
    """The error an error answer stands for (its body read): the status's class, with the
    contract's ``type``, ``message`` and ``param``, and ``retry_after`` from ``Retry-After``."""
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


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    """The SDK's error for an httpx transport failure, ``exc`` as its cause; the message names
    the scheme, host and port only, never a URL's userinfo (it may be a secret)."""
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        url = exc.request.url
        port = f":{url.port}" if url.port else ""
        what = f"{url.scheme}://{url.host}{port}: {what}"
    except RuntimeError:  # an error raised with no request attached
        pass
    error = cls(what)
    error.__cause__ = exc
    return error
