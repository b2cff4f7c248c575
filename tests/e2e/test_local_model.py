"""End to end against a real model: SmolLM2 through llama.cpp's server, via tokenrelay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.helpers import Ev, assert_well_formed, collect, parse_sse, texts
from tests.support.system import RelaySystem
from tokenrelay.cli.dev import LOCAL_MODEL

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


@pytest.fixture
async def client(model_system: RelaySystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=model_system.base_url, timeout=30) as c:
        yield c


async def read_some(client: httpx.AsyncClient, job_id: str, n: int) -> list[Ev]:
    """Read until ``n`` deltas arrived, then drop the connection."""
    buf = b""
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        async for part in response.aiter_bytes():
            buf += part
            done = buf[: buf.rfind(b"\n\n") + 2]
            if done.count(b"event: delta") >= n:
                return parse_sse(done)[0]
    return parse_sse(buf)[0]


async def test_real_model_streams_resumes_and_reports_estimated_usage(
    client: httpx.AsyncClient,
) -> None:
    body = {"messages": PROMPT, "options": {"max_tokens": 60, "temperature": 0, "seed": 1}}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202
    job_id = response.json()["id"]
    async with asyncio.timeout(120):
        first = await read_some(client, job_id, 5)
        assert [e.type for e in first[:1]] == ["start"]
        rest = await collect(client, job_id, last_event_id=first[-1].id, within=120)
    events = first + rest
    assert_well_formed(events)
    assert events == await collect(client, job_id)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded"
    assert len(job["text"]) > 20
    assert texts(events) == job["text"]
    (usage,) = [e.data for e in events if e.type == "usage"]
    # llama.cpp's server sends no usage chunk: tokenrelay estimates it and says so.
    assert usage["source"] == "estimated"
    assert 0 < usage["completion_tokens"] <= 60
    assert events[-1].data["finish_reason"] in ("stop", "length")


async def test_real_model_cancel_mid_stream(client: httpx.AsyncClient) -> None:
    body = {"messages": PROMPT, "options": {"max_tokens": 1500, "temperature": 0.7}}
    job_id = (await client.post("/v1/jobs", json=body)).json()["id"]
    async with asyncio.timeout(120):
        first = await read_some(client, job_id, 3)
        t0 = time.monotonic()
        assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
        rest = await collect(client, job_id, after=first[-1].id, within=30)
    assert time.monotonic() - t0 < 2.0
    events = first + rest
    assert_well_formed(events)
    assert events[-1].data == {"finish_reason": "cancelled"}
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "cancelled"
    assert job["text"] == texts(events)


async def test_real_model_through_the_responses_api_in_background(
    model_system: RelaySystem,
) -> None:
    async with (
        openai.AsyncOpenAI(
            base_url=f"{model_system.base_url}/v1",
            api_key="unused",
            max_retries=0,
            timeout=60,
            _strict_response_validation=True,
        ) as oa,
        asyncio.timeout(180),
    ):
        stream = await oa.responses.create(
            model=f"local/{LOCAL_MODEL}",
            instructions="You are a storyteller.",
            input=PROMPT[0]["content"],
            max_output_tokens=60,
            temperature=0,
            background=True,
            stream=True,
        )
        seen = []
        async for event in stream:
            seen.append(event)
            if sum(e.type == "response.output_text.delta" for e in seen) == 5:
                break
        await stream.close()
        rid = seen[0].response.id
        n = seen[-1].sequence_number
        resumed = await oa.responses.retrieve(rid, stream=True, starting_after=n)
        rest = [event async for event in resumed]
        retrieved = await oa.responses.retrieve(rid)
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text) > 20 and text == final.response.output_text == retrieved.output_text
    assert final.response.usage is not None
    assert 0 < final.response.usage.output_tokens <= 60


def test_the_readme_responses_example_runs(model_system: RelaySystem) -> None:
    """The README's background-mode example, as written, with the test system's address."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### OpenAI's Responses API, with background mode", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:8000/v1" in example
    example = example.replace("http://127.0.0.1:8000/v1", f"{model_system.base_url}/v1")
    run = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=180, check=False
    )
    assert run.returncode == 0, run.stderr
    story, rest = run.stdout.split("\n[reconnecting]\n", 1)
    assert story.strip() and "tokens]" in rest
    assert "\nqueued\n" in rest and len(rest.rsplit("queued\n", 1)[1].strip()) > 5
