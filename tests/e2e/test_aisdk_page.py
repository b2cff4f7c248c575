"""The AI SDK example page (examples/aisdk-chat: React, ``useChat({ resume: true })``) in real
headless Chromium against real processes: an answer streams, a reload mid-answer resumes it to
the same final text with no duplicate message, and stop cancels the job on the server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_demo_page import browser  # noqa: F401 (a fixture)
from tests.support.servers import RedisDatabases
from tests.support.system import ROOT, RelaySystem, relay_system, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.processes import Group, free_port, http_ok

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "aisdk-chat"
VITE = EXAMPLE / "node_modules" / ".bin" / "vite"
STORY = [f"word{i} " for i in range(120)]  # 6 s at 50 ms a piece
WAIT_S = 60


def build(out: Path, **env: str) -> None:
    """The example's static build (``vite build``) into ``out``; ``env``: its ``VITE_*``."""
    built = subprocess.run(
        [str(VITE), "build", "--outDir", str(out), "--emptyOutDir", "--logLevel", "warn"],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr


@contextlib.contextmanager
def served(out: Path, port: int, api: str, log: Path) -> Iterator[str]:
    """``vite preview`` of the build in ``out`` on ``port``, its proxy passing ``/v1`` to
    ``api``; yields the page's origin."""
    args = [str(VITE), "preview", "--outDir", str(out), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--strictPort", "--bypass-lock"]  # two at once here
    with Group() as group:
        env = {**os.environ, "TOKENRELAY_URL": api}
        vite = group.start("vite", args, env=env, cwd=EXAMPLE, log=log)
        vite.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/"), timeout_s=60)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def same_origin(
    system: RelaySystem, upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RelaySystem]]:
    """The page as with ``make run``: served by vite, whose proxy passes ``/v1`` to the API."""
    assert VITE.exists(), "run `make js` (npm ci in examples/aisdk-chat)"
    upstream.add("story", Scenario(pieces=STORY, delay_s=0.05))
    workdir = tmp_path_factory.mktemp("aisdk_page")
    build(workdir / "dist")
    with served(workdir / "dist", free_port(), system.base_url, workdir / "vite.log") as url:
        yield url, system


@pytest.fixture(scope="module")
def cross_origin(
    redis_dbs: RedisDatabases, upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RelaySystem]]:
    """The page on an origin of its own, calling the API's URL itself: a system that allows
    that origin (``TOKENRELAY_CORS_ORIGINS``), and no proxy (``/v1`` goes nowhere)."""
    assert VITE.exists(), "run `make js` (npm ci in examples/aisdk-chat)"
    upstream.add("story", Scenario(pieces=STORY, delay_s=0.05))
    workdir = tmp_path_factory.mktemp("aisdk_page_cors")
    port = free_port()
    env = system_env(upstream, TOKENRELAY_CORS_ORIGINS=f"http://127.0.0.1:{port}")
    with (
        redis_dbs.database() as redis_url,
        relay_system(workdir / "system", redis_url, env) as system,
    ):
        build(workdir / "dist", VITE_TOKENRELAY_URL=system.base_url)
        nowhere = f"http://127.0.0.1:{free_port()}"
        with served(workdir / "dist", port, nowhere, workdir / "vite.log") as url:
            yield url, system


def messages(driver: WebDriver) -> list[dict[str, str]]:
    return [
        {
            "role": el.get_attribute("data-role") or "",
            "id": el.get_attribute("data-id") or "",
            "text": el.find_element(By.CLASS_NAME, "text").text,
        }
        for el in driver.find_elements(By.CSS_SELECTOR, "#messages .message")
    ]


def status(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "status").text


def answer(driver: WebDriver) -> dict[str, str] | None:
    shown = messages(driver)
    return shown[-1] if len(shown) == 2 and shown[-1]["role"] == "assistant" else None


def ask(driver: WebDriver, wait: WebDriverWait[WebDriver], url: str, text: str) -> dict[str, str]:
    """Open the page, send ``text``, wait for the first words of the answer; returns it."""
    driver.get(f"{url}/?model=openai/story")
    wait.until(lambda d: status(d) == "ready")
    driver.find_element(By.ID, "prompt").send_keys(text)
    driver.find_element(By.ID, "send").click()
    wait.until(lambda d: (a := answer(d)) is not None and a["text"].count("word") >= 5)
    shown = answer(driver)
    assert shown is not None
    return shown


def job_of(http: httpx.Client, message_id: str) -> dict[str, object]:
    response = http.get(f"/v1/jobs/{message_id.removeprefix('msg_')}")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.parametrize("origin", ["same_origin", "cross_origin"])
def test_a_reload_mid_answer_resumes_it(
    browser: WebDriver,  # noqa: F811
    origin: str,
    request: pytest.FixtureRequest,
    upstream: UpstreamServer,
) -> None:
    page, system = request.getfixturevalue(origin)
    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.05)
    asked = len([r for r in upstream.requests if r.scenario == "story"])
    before = ask(browser, wait, page, "Tell me a story")
    chat = browser.find_element(By.ID, "chat-id").text
    assert status(browser) == "streaming"

    browser.refresh()  # mid-answer: the page has only what it saved
    assert chat in browser.current_url
    whole = "".join(STORY).strip()
    wait.until(
        lambda d: status(d) == "ready" and (a := answer(d)) is not None and a["text"] == whole
    )
    shown = messages(browser)
    assert [m["role"] for m in shown] == ["user", "assistant"], "no duplicate message"
    assert shown[0]["text"] == "Tell me a story"
    assert shown[1]["id"] == before["id"]
    assert len(before["text"]) < len(whole), "the reload came mid-answer"
    with httpx.Client(base_url=system.base_url, timeout=10) as http:
        job = job_of(http, before["id"])
    assert job["status"] == "succeeded"
    assert str(job["text"]).strip() == shown[1]["text"]
    # The page resumed the one generation; it did not ask again.
    assert len([r for r in upstream.requests if r.scenario == "story"]) == asked + 1


def test_stop_cancels_the_job_on_the_server(
    browser: WebDriver,  # noqa: F811
    same_origin: tuple[str, RelaySystem],
) -> None:
    page, system = same_origin
    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.05)
    before = ask(browser, wait, page, "Tell me another story")
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda d: status(d) == "ready")
    with httpx.Client(base_url=system.base_url, timeout=10) as http:
        deadline = time.monotonic() + WAIT_S
        while (job := job_of(http, before["id"]))["status"] not in ("cancelled", "succeeded"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    assert job["status"] == "cancelled"
    assert job["finish_reason"] == "cancelled"
    assert len(str(job["text"])) < len("".join(STORY))
    shown = answer(browser)
    assert shown is not None and str(job["text"]).startswith(shown["text"])
