"""``Idempotency-Key`` on the drop-in routes, as on ``POST /v1/jobs``: the same key and body
again follow the same job (the upstream is asked once), another body with the key is a 409 in
the routes' error shape, and without a key every request is a job of its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support.system import RelaySystem
from tests.upstream_server import UpstreamServer

MODEL = "openai/hello"


def _ai_sdk(text: str) -> dict[str, Any]:
    message = {"id": "u0", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": f"chat-{uuid.uuid4()}", "messages": [message], "model": MODEL}


ROUTES: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "responses-stream": (
        "/v1/responses",
        lambda text: {"model": MODEL, "input": text, "stream": True},
    ),
    "responses": ("/v1/responses", lambda text: {"model": MODEL, "input": text}),
    "responses-background": (
        "/v1/responses",
        lambda text: {"model": MODEL, "input": text, "background": True},
    ),
    "chat-completions-stream": (
        "/v1/chat/completions",
        lambda text: {
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "stream": True,
        },
    ),
    "completions": ("/v1/completions", lambda text: {"model": MODEL, "prompt": text}),
    "ai-sdk-chat": ("/v1/ai-sdk/chat", _ai_sdk),
    "ollama-chat": (
        "/api/chat",
        lambda text: {"model": MODEL, "messages": [{"role": "user", "content": text}]},
    ),
    "ollama-generate": (
        "/api/generate",
        lambda text: {"model": MODEL, "prompt": text, "stream": False},
    ),
}


@pytest.fixture
async def http(system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=20) as c:
        yield c


def asked(upstream: UpstreamServer, marker: str) -> int:
    """How many requests the upstream got with ``marker`` in their body."""
    return sum(marker in json.dumps(r.body, ensure_ascii=False) for r in upstream.requests)


async def post(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], key: str | None
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    async with asyncio.timeout(30):
        return await http.post(path, json=body, headers=headers)


async def settled(upstream: UpstreamServer, marker: str, at_least: int) -> int:
    """The upstream's count of ``marker`` once a background job has reached it."""
    for _ in range(300):  # 15 s at most
        if asked(upstream, marker) >= at_least:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # time for a second (wrong) request to arrive too
    return asked(upstream, marker)


@pytest.mark.parametrize("route", ROUTES)
async def test_the_same_key_and_body_follow_one_job(
    http: httpx.AsyncClient, upstream: UpstreamServer, route: str
) -> None:
    path, make = ROUTES[route]
    marker = f"idem {uuid.uuid4()}"
    body, key = make(marker), f"key-{uuid.uuid4()}"
    first = await post(http, path, body, key)
    again = await post(http, path, body, key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    job = first.headers["x-tokenrelay-job"]
    assert again.headers["x-tokenrelay-job"] == job
    assert await settled(upstream, marker, 1) == 1
    if "background" not in route:  # the retry got the answer too: the same job, replayed
        assert "Hello!" in again.text

    other = await post(http, path, make(f"{marker} other"), key)
    assert other.status_code == 409, other.text
    assert other.headers["content-type"] == "application/json"
    error = other.json()["error"]
    assert error["type"] == "conflict_error" and error["param"] == "Idempotency-Key"
    assert "another body" in error["message"]
    assert asked(upstream, f"{marker} other") == 0


@pytest.mark.parametrize("route", ROUTES)
async def test_without_a_key_each_request_is_a_job(
    http: httpx.AsyncClient, upstream: UpstreamServer, route: str
) -> None:
    path, make = ROUTES[route]
    marker = f"no key {uuid.uuid4()}"
    body = make(marker)
    first = await post(http, path, body, None)
    second = await post(http, path, body, None)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-tokenrelay-job"] != second.headers["x-tokenrelay-job"]
    assert await settled(upstream, marker, 2) == 2


async def test_a_key_is_bound_to_its_route(http: httpx.AsyncClient) -> None:
    """One key on two routes is two requests with different bodies: a 409, not another
    route's job."""
    key = f"key-{uuid.uuid4()}"
    marker = f"routes {uuid.uuid4()}"
    path, make = ROUTES["completions"]
    assert (await post(http, path, make(marker), key)).status_code == 200
    path, make = ROUTES["ollama-generate"]
    assert (await post(http, path, make(marker), key)).status_code == 409
