"""Bounded answers to unbounded input: header size limit, and errors that quote only a prefix.

Every error here goes through a real ``tokenrelay api`` process (its own HTTP protocol too):
a huge header or value must get a small JSON error in the contract's shape, never an echo.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from tests.integration.helpers import collect, submit
from tests.support.system import RelaySystem

SMALL = 1024  # bytes: every error answer here must be smaller
LIMIT = 16384  # TOKENRELAY_MAX_HEADER_BYTES, its default


def assert_small_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:300]
    assert len(response.content) < SMALL, len(response.content)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "param"}
    assert "Traceback" not in response.text
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture
async def client(system: RelaySystem) -> Any:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def finished_job(system: RelaySystem) -> str:
    async def make() -> str:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=15) as c:
            job_id = await submit(c, model="hello")
            async with asyncio.timeout(15):
                await collect(c, job_id)
            return job_id

    return asyncio.run(make())


# --- the header limit -----------------------------------------------------------------------


async def test_a_4mb_last_event_id_gets_a_small_400(
    client: httpx.AsyncClient, finished_job: str
) -> None:
    async with asyncio.timeout(15):
        response = await client.get(
            f"/v1/jobs/{finished_job}/events", headers={"Last-Event-ID": "1" * (4 << 20)}
        )
    error = assert_small_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert f"{LIMIT} bytes" in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Padding": "p" * 100_000}, id="one 100 KB header"),
        pytest.param({f"X-Pad-{i}": "p" * 1000 for i in range(17)}, id="17 headers of 1 KB"),
        pytest.param({"X-Padding": "p" * (LIMIT + 100)}, id="just over the limit"),
    ],
)
async def test_headers_over_the_limit_get_a_small_400(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    async with asyncio.timeout(15):
        response = await client.get("/healthz", headers=headers)
    error = assert_small_error(response, 400)
    assert f"{LIMIT} bytes" in error["message"]
    assert response.headers.get("connection") == "close"


async def test_headers_under_the_limit_pass(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Padding": "p" * (LIMIT - 1000)})
    assert response.json() == {"status": "ok"}


def test_a_raw_client_writing_a_huge_head_reads_the_400(system: RelaySystem) -> None:
    """The protocol cuts the head early but reads on, so a client that writes all its request
    before reading gets the answer, not a reset; the next connection is served as usual."""
    port = int(system.base_url.rsplit(":", 1)[1])
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * (4 << 20) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request"
    assert len(answer) < SMALL + 300
    assert b'"type":"invalid_request_error"' in rest
    assert httpx.get(f"{system.base_url}/healthz", timeout=10).status_code == 200


# --- errors quote a short prefix of what the client sent ---------------------------------------


def assert_cut(message: str, sent: str) -> None:
    assert sent[:64] in message
    assert sent[:65] not in message
    assert "cut" in message


@pytest.mark.parametrize("where", ["Last-Event-ID", "after"])
async def test_a_malformed_event_id_is_quoted_cut(
    client: httpx.AsyncClient, finished_job: str, where: str
) -> None:
    bad = "x" * 10_000  # under the header limit: the route itself answers
    kwargs: dict[str, Any] = (
        {"headers": {"Last-Event-ID": bad}}
        if where == "Last-Event-ID"
        else {"params": {"after": bad}}
    )
    async with asyncio.timeout(15):
        response = await client.get(f"/v1/jobs/{finished_job}/events", **kwargs)
    error = assert_small_error(response, 400)
    assert error["param"] == where
    assert_cut(error["message"], bad)


async def test_a_long_job_id_in_a_path_gets_a_short_404(client: httpx.AsyncClient) -> None:
    ref = "job_" + "A" * 6000
    for path in (f"/v1/jobs/{ref}", f"/v1/jobs/{ref}/events", f"/v1/chat/completions/{ref}"):
        async with asyncio.timeout(15):
            response = await client.get(path)
        error = assert_small_error(response, 404)
        assert_cut(error["message"], ref)
    response = await client.post(f"/v1/jobs/{ref}/cancel")
    assert_cut(assert_small_error(response, 404)["message"], ref)


async def test_long_names_and_values_in_bodies_are_quoted_cut(client: httpx.AsyncClient) -> None:
    model = "u" * 500 + "/m"  # the most a model name may have: 512 characters
    response = await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )
    error = assert_small_error(response, 422)
    assert error["param"] == "model"
    assert_cut(error["message"], model)

    before = "9" * 50 + "z" * 10_000
    error = assert_small_error(await client.get("/v1/jobs", params={"before": before}), 422)
    assert_cut(error["message"], before)

    key = "k" * 20_000  # a client-chosen key is part of the field path
    response = await client.post(
        "/v1/jobs", json={"model": "hello", "prompt": "hi", "metadata": {key: [1]}}
    )
    error = assert_small_error(response, 422)
    assert error["param"] is not None and len(error["param"]) < 100
    assert error["param"].startswith("metadata.kkkk")
