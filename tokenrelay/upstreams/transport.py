"""httpx's transport for the upstreams, on aiohttp's C HTTP parser.

httpx stays the client (its API, timeouts and errors are what the adapters use); only the
transport under it changes, as the ``openai`` package offers too (``httpx-aiohttp``). Reading
a streamed body through httpcore and h11 costs several Python calls per network read and per
chunk; aiohttp parses in C and hands over whatever arrived in one read, so decoding works on
whole network reads.

``AiohttpTransport`` of ``httpx-aiohttp`` is kept for the session it builds; requests and
errors are handled here, so aiohttp's errors become the httpx errors the adapters translate:
a connection lost mid-body is a ``RemoteProtocolError`` or ``ReadError`` (not a timeout),
a refused connection a ``ConnectError``.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
from aiohttp import ClientTimeout
from httpx_aiohttp import AiohttpTransport

__all__ = ["RelayTransport", "new_client"]

# Most specific first: the first match wins.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.RemoteProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(f"{type(exc).__name__}: {exc}") from exc
        raise  # pragma: no cover - _ERRORS ends with ClientError


class _Body(httpx.AsyncByteStream):
    """A response body as aiohttp reads it: each chunk is whatever one read brought."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for data in self._response.content.iter_any():
                yield data

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end, else the connection is closed.
        with _httpx_errors():
            self._response.release()


class RelayTransport(AiohttpTransport):
    """``httpx.AsyncBaseTransport`` over one aiohttp session (made on first use, in the
    running loop)."""

    _env_proxies: dict[str, str]

    def get_client(self) -> aiohttp.ClientSession:
        # No cap on connections unless the limits set one (aiohttp's default is 100, which
        # would hold the 101st concurrent job's request back); idle ones kept as httpx would.
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        # Proxies from the environment (HTTP(S)_PROXY, NO_PROXY), as httpx's own transport
        # honours them: read once here, not on every request (aiohttp's trust_env would).
        self._env_proxies = urllib.request.getproxies_environment()
        return aiohttp.ClientSession(connector=connector)

    def _proxy(self, url: httpx.URL) -> str | None:
        proxy = self._env_proxies.get(url.scheme)
        if proxy is None or urllib.request.proxy_bypass(url.host):  # NO_PROXY
            return None
        return proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        with _httpx_errors():
            response = await self.client.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                proxy=self._proxy(request.url),
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions=extensions,
        )


def new_client(max_keepalive: int = 100) -> httpx.AsyncClient:
    """The worker's client of the upstreams: no connection limit, no redirects followed."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max_keepalive)
    return httpx.AsyncClient(
        transport=RelayTransport(limits=limits), limits=limits, follow_redirects=False
    )
