"""The fault matrix: every way an upstream can fail, for every kind. Each ends with the right
events, exactly one ``end``, the right status, and nothing hangs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from tests.integration.helpers import Ev, assert_well_formed, collect, submit, texts
from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system, upstreams_env
from tests.upstream_server import SCENARIOS, Scenario, UpstreamServer
from tokenrelay.processes import free_port

KINDS = ["openai", "ollama", "sse"]
TIMEOUT_S = 1.0  # first-token and idle timeouts of this system's upstreams
ATTEMPTS = 3


@pytest.fixture(scope="module")
def fault_system(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """Upstreams with short timeouts and three attempts, plus one nothing listens on."""
    upstreams = upstreams_env(upstream)
    for config in upstreams.values():
        config.update(first_token_timeout_s=TIMEOUT_S, idle_timeout_s=TIMEOUT_S)
        config.update(max_attempts=ATTEMPTS)
    upstreams["dead"] = {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    env = {
        "TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams).decode(),
        "TOKENRELAY_DEFAULT_UPSTREAM": "openai",
        "TOKENRELAY_RETRY_BUDGET_S": "10",
        "TOKENRELAY_KEEPALIVE_S": "0.5",
    }
    workdir = tmp_path_factory.mktemp("faults")
    with redis_dbs.database() as url, relay_system(workdir, url, env) as system:
        yield system


@pytest.fixture
async def client(fault_system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fault_system.base_url, timeout=10) as c:
        yield c


def body_for(kind: str, scenario: str) -> dict[str, object]:
    if kind == "sse":
        return {"upstream": kind, "prompt": scenario}
    return {
        "upstream": kind,
        "model": scenario,
        "messages": [{"role": "user", "content": scenario}],
    }


def starts(events: list[Ev]) -> list[Ev]:
    return [e for e in events if e.type == "start"]


def error_of(events: list[Ev]) -> dict[str, object]:
    (error,) = [e.data for e in events if e.type == "error"]
    return error


async def finish(client: httpx.AsyncClient, job_id: str) -> tuple[list[Ev], dict[str, object]]:
    events = await collect(client, job_id, within=30)
    assert_well_formed(events)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["text"] == texts(events)
    assert job["last_event_id"] == events[-1].id
    return events, job


async def test_refused_connection_is_retried_then_upstream_unavailable(
    client: httpx.AsyncClient,
) -> None:
    job_id = await submit(client, upstream="dead", model="any")
    events, job = await finish(client, job_id)
    assert [e.type for e in events] == ["start"] * ATTEMPTS + ["error", "end"]
    assert [e.data["attempt"] for e in starts(events)] == [1, 2, 3]
    assert starts(events)[1].data["previous_error"]["type"] == "upstream_unavailable"
    error = error_of(events)
    assert error["type"] == "upstream_unavailable" and error["retryable"] is True
    assert job["status"] == "failed" and job["attempt"] == ATTEMPTS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 429])
async def test_always_failing_status_is_retried_then_fails(
    client: httpx.AsyncClient, kind: str, status: int
) -> None:
    scenario = "http500" if status == 500 else "http429"
    job_id = await submit(client, **body_for(kind, scenario))
    events, job = await finish(client, job_id)
    assert [e.type for e in events] == ["start"] * ATTEMPTS + ["error", "end"]
    error = error_of(events)
    assert (error["type"], error["status"], error["retryable"]) == ("upstream_error", status, True)
    assert job["status"] == "failed" and job["error"] == error


@pytest.mark.parametrize("kind", KINDS)
async def test_500_then_success_shows_both_attempts_and_the_text_once(
    client: httpx.AsyncClient, upstream: UpstreamServer, kind: str
) -> None:
    name = f"flaky-500-{kind}"
    upstream.add(name, Scenario(pieces=SCENARIOS["hello"].pieces, fail_first=1))
    job_id = await submit(client, **body_for(kind, name))
    events, job = await finish(client, job_id)
    assert [e.data["attempt"] for e in starts(events)] == [1, 2]
    assert starts(events)[1].data["previous_error"]["status"] == 500
    assert events[1].type == "start", "nothing was published before the retry"
    assert texts(events) == "".join(SCENARIOS["hello"].pieces)
    assert job["status"] == "succeeded" and job["attempt"] == 2
    assert [e.type for e in events].count("error") == 0


async def test_429_retry_after_is_honoured(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add(
        "busy-once", Scenario(pieces=["ok"], fail_first=1, fail_status=429, retry_after="1")
    )
    job_id = await submit(client, model="busy-once")
    events, job = await finish(client, job_id)
    first, second = starts(events)
    waited_ms = int(second.id.split("-")[0]) - int(first.id.split("-")[0])
    assert waited_ms >= 950, "the retry waited for Retry-After"
    assert job["status"] == "succeeded" and job["text"] == "ok"


async def test_retry_after_beyond_the_budget_gives_up_at_once(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("busy-long", Scenario(fail_first=5, fail_status=429, retry_after="3600"))
    t0 = time.monotonic()
    job_id = await submit(client, model="busy-long")
    events, job = await finish(client, job_id)
    assert time.monotonic() - t0 < 5
    assert len(starts(events)) == 1
    assert error_of(events)["status"] == 429 and job["status"] == "failed"


@pytest.mark.parametrize("kind", KINDS)
async def test_stall_before_the_first_token_times_out_each_attempt(
    client: httpx.AsyncClient, upstream: UpstreamServer, kind: str
) -> None:
    name = f"stall-first-{kind}"
    upstream.add(name, Scenario(pieces=["late"], first_delay_s=30))
    t0 = time.monotonic()
    job_id = await submit(client, **body_for(kind, name))
    events, job = await finish(client, job_id)
    assert time.monotonic() - t0 < ATTEMPTS * TIMEOUT_S + 8
    assert len(starts(events)) == ATTEMPTS
    error = error_of(events)
    assert error["type"] == "upstream_timeout" and "first token" in str(error["message"])
    assert job["status"] == "failed" and job["text"] == ""
    assert upstream.wait_for_disconnect(name, timeout=5), "the stalled request was closed"


@pytest.mark.parametrize("kind", KINDS)
async def test_stall_after_the_first_token_is_an_idle_timeout_without_retry(
    client: httpx.AsyncClient, upstream: UpstreamServer, kind: str
) -> None:
    name = f"stall-mid-{kind}"
    upstream.add(name, Scenario(pieces=["one ", "two ", "three"], stall_after=2, stall_s=30))
    job_id = await submit(client, **body_for(kind, name))
    events, job = await finish(client, job_id)
    assert len(starts(events)) == 1, "no silent retry after deltas were published"
    assert texts(events) == "one two "
    error = error_of(events)
    assert error["type"] == "upstream_timeout" and "no token for" in str(error["message"])
    assert events[-2].type == "error" and events[-1].data == {"finish_reason": "error"}
    assert job["status"] == "failed"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("scenario", "error_type"), [("error_mid", "upstream_error"), ("drop", "upstream_unavailable")]
)
async def test_failure_after_deltas_keeps_the_text_and_ends_once(
    client: httpx.AsyncClient, kind: str, scenario: str, error_type: str
) -> None:
    job_id = await submit(client, **body_for(kind, scenario))
    events, job = await finish(client, job_id)
    assert len(starts(events)) == 1
    sc = SCENARIOS[scenario]
    cut = sc.error_after if sc.error_after is not None else sc.drop_after
    assert texts(events) == "".join(sc.pieces[:cut])
    assert error_of(events)["type"] == error_type
    assert events[-2].type == "error" and events[-1].data == {"finish_reason": "error"}
    assert job["status"] == "failed"


@pytest.mark.parametrize("kind", KINDS)
async def test_malformed_line_is_upstream_protocol(
    client: httpx.AsyncClient, upstream: UpstreamServer, kind: str
) -> None:
    name = f"malformed-{kind}"
    upstream.add(name, Scenario(pieces=["fine ", "{{not json"], malformed_after=1))
    job_id = await submit(client, **body_for(kind, name))
    events, job = await finish(client, job_id)
    assert texts(events) == "fine "
    error = error_of(events)
    assert error["type"] == "upstream_protocol" and error["retryable"] is False
    assert job["status"] == "failed"


async def test_a_stalled_job_still_answers_keepalives_and_cancel(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    upstream.add("stall-cancel", Scenario(pieces=["x"], stall_after=0, stall_s=30))
    job_id = await submit(client, model="stall-cancel")
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        body = b""
        async for part in response.aiter_bytes():
            body += part
            if b": keep-alive" in body:
                break
    response = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code in (200, 202)
    events, job = await finish(client, job_id)
    assert events[-1].data == {"finish_reason": "cancelled"}
    assert job["status"] == "cancelled"
