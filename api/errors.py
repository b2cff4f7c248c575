"""Every error the API answers, in the contract's one JSON shape, mapped in one place."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.encoding import JSONBody
from tokenrelay.errors import (
    EventIdExpired,
    InvalidEventId,
    JobNotFound,
    StoreUnavailable,
    StreamGone,
    clipped,
)

log = structlog.get_logger("tokenrelay.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    410: "gone_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """Raise anywhere in a route: becomes ``{"error": {type, message, param}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _TYPES.get(status, "invalid_request_error")
        self.headers = headers


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    type_: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONBody:
    body: dict[str, Any] = {
        "error": {
            "type": type_ or _TYPES.get(status, "api_error"),
            "message": message,
            "param": param,
        }
    }
    return JSONBody(body, status_code=status, headers=headers)


def headers_too_large(limit: int) -> JSONBody:
    """The 400 for request headers over ``limit`` bytes (``TOKENRELAY_MAX_HEADER_BYTES``), the
    same from the HTTP protocol (``api.server``) and from the ASGI layer (``api.app``)."""
    return error_response(
        400,
        f"the request headers are larger than {limit} bytes (TOKENRELAY_MAX_HEADER_BYTES)",
        headers={"Connection": "close"},
    )


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def _param(loc: tuple[Any, ...]) -> str | None:
    """The field a validation error is about, as the client wrote it: without FastAPI's
    location prefix nor the union-member tags pydantic adds (``content.str``)."""
    parts = [
        str(p)
        for p in loc
        if p not in ("body", "query", "path", "header")
        and not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))
    ]
    return clipped(".".join(parts)) or None


async def _api_error(_: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.message, param=exc.param, type_=exc.type, headers=exc.headers
    )


async def _validation_error(_: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return error_response(400, "request body is not valid JSON", param=None)
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return error_response(400, "the request body is empty: send a JSON object", param=None)
    loc = tuple(first.get("loc", ()))
    param = _param(loc)
    message = str(first.get("msg", "invalid request"))
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(422, message, param=param)


async def _http_error(_: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code if exc.status_code >= 400 else 400
    message = {404: "no such endpoint", 405: "method not allowed for this endpoint"}.get(
        status, str(exc.detail)
    )
    return error_response(status, message, headers=getattr(exc, "headers", None))


def _known_error(status: int, param: str | None = None) -> Any:
    async def handler(_: Request, exc: Exception) -> JSONBody:
        return error_response(status, str(exc), param=param)

    return handler


async def _redis_error(_: Request, exc: Exception) -> JSONBody:
    log.warning("redis_unavailable", error=type(exc).__name__)
    return error_response(
        503, "the job store is unreachable; try again shortly", headers={"Retry-After": "1"}
    )


async def _store_unavailable(_: Request, exc: Exception) -> JSONBody:
    log.warning("store_unavailable", error=str(exc))
    return error_response(503, f"{exc}; try again shortly", headers={"Retry-After": "1"})


async def _unexpected(_: Request, exc: Exception) -> JSONBody:
    log.error("unhandled_error", error=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal error", type_="api_error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(JobNotFound, _known_error(404))
    app.add_exception_handler(InvalidEventId, _known_error(400, "after"))
    app.add_exception_handler(EventIdExpired, _known_error(410, "after"))
    app.add_exception_handler(StreamGone, _known_error(410))
    app.add_exception_handler(RedisError, _redis_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)
