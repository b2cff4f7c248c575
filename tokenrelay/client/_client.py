"""The blocking ``Client`` and the ``AsyncClient``: the same methods, over httpx.

Each request's answer is parsed into the models (``_models``) or raised as the error tree
(``_exceptions``); ``stream`` follows a job's events with the shared follower (``_streaming``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import orjson

from tokenrelay.client._exceptions import (
    APIConnectionError,
    APIError,
    ProtocolError,
    api_error,
    connection_error,
)
from tokenrelay.client._models import Job, JobHandle, JobList, parsed
from tokenrelay.client._streaming import MAX_RECONNECTS, STREAM_READ_TIMEOUT_S, Follow
from tokenrelay.wire import Event

__all__ = ["DEFAULT_URL", "AsyncClient", "Client"]

DEFAULT_URL = "http://127.0.0.1:8000"


def _path(job_id: str, suffix: str = "") -> str:
    """A job's URL path; the id is escaped, so no id can reach another endpoint."""
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def _json(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; raises the ``APIError`` an error answer stands
    for, ``ProtocolError`` for a success whose body is not JSON."""
    if response.is_success:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(
                f"HTTP {response.status_code} with a body that is not JSON"
            ) from exc
    raise api_error(response)


class _Base:
    """What both clients share: the base URL, the headers (the key is never echoed), the
    timeouts, and the bodies of their requests."""

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
            raise connection_error(exc) from exc
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
        return parsed(JobHandle.from_data, raw)

    def get(self, job_id: str) -> Job:
        """The job's state and text so far; ``NotFoundError`` if unknown, expired or not yours."""
        return parsed(Job.from_data, self._request("GET", _path(job_id)))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (a finished one is returned unchanged); its stream ends ``cancelled``."""
        return parsed(Job.from_data, self._request("POST", _path(job_id, "/cancel")))

    def jobs(self, limit: int = 20, *, before: str | int | None = None) -> JobList:
        """The caller's recent jobs, newest first (``limit`` 1 to 100)."""
        body = self._request("GET", "/v1/jobs", params=self._list_params(limit, before))
        return parsed(JobList.from_data, body)

    def stream(self, job_id: str, after: str | None = None) -> Generator[Event, None, None]:
        """The job's events after ``after`` (an event id, ``"now"``, or None for all), in order.

        Reconnects with ``Last-Event-ID`` when the connection drops, so each event is yielded
        exactly once; ends after the ``end`` event. Raises ``StreamDisconnected`` after
        ``max_reconnects`` failed connections in a row, ``NotFoundError`` / ``GoneError`` /
        ``BadRequestError`` as the API answers. ``close()`` the generator to stop early.
        """
        if after == "now":
            after = self.get(job_id).last_event_id
        follow = Follow(job_id, _path(job_id, "/events"), after, self.max_reconnects)
        while True:
            try:
                with self._http.stream(
                    "GET", follow.path, headers=follow.headers(), timeout=self._stream_timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        raise api_error(response)
                    for chunk in response.iter_bytes():
                        yield from follow.feed(chunk)
                        if follow.done:
                            return
                if follow.complete(self.get(job_id)):
                    return
                raise APIConnectionError("the response ended before the end event")
            except httpx.TransportError as exc:
                delay = follow.retry_delay(connection_error(exc))
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
            raise connection_error(exc) from exc
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
        return parsed(JobHandle.from_data, raw)

    async def get(self, job_id: str) -> Job:
        """See ``Client.get``."""
        return parsed(Job.from_data, await self._request("GET", _path(job_id)))

    async def cancel(self, job_id: str) -> Job:
        """See ``Client.cancel``."""
        return parsed(Job.from_data, await self._request("POST", _path(job_id, "/cancel")))

    async def jobs(self, limit: int = 20, *, before: str | int | None = None) -> JobList:
        """See ``Client.jobs``."""
        body = await self._request("GET", "/v1/jobs", params=self._list_params(limit, before))
        return parsed(JobList.from_data, body)

    async def stream(self, job_id: str, after: str | None = None) -> AsyncGenerator[Event, None]:
        """See ``Client.stream``; ``aclose()`` the generator (or use
        ``contextlib.aclosing``) to stop early and close the connection at once."""
        if after == "now":
            after = (await self.get(job_id)).last_event_id
        follow = Follow(job_id, _path(job_id, "/events"), after, self.max_reconnects)
        while True:
            try:
                async with self._http.stream(
                    "GET", follow.path, headers=follow.headers(), timeout=self._stream_timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise api_error(response)
                    async for chunk in response.aiter_bytes():
                        for event in follow.feed(chunk):
                            yield event
                        if follow.done:
                            return
                if follow.complete(await self.get(job_id)):
                    return
                raise APIConnectionError("the response ended before the end event")
            except httpx.TransportError as exc:
                delay = follow.retry_delay(connection_error(exc))
            except (APIConnectionError, APIError) as exc:
                delay = follow.retry_delay(exc)
            await anyio.sleep(delay)
