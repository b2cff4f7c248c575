"""The demo page in real headless Chromium: submit, watch text grow, drop, resume, second tab."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.gate import Gate
from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system
from tokenrelay.cli.dev import LOCAL_MODEL

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "the browser test needs Debian's chromium and chromium-driver (make browser)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def gated_model(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, local_model: str
) -> Iterator[tuple[RelaySystem, Gate]]:
    """A system on the real model, through a gate that holds the answer after 40 SSE events:
    the test drops and adds listeners while the answer is certainly mid-way, however slow or
    fast the model runs on this machine."""
    port = httpx.URL(local_model).port
    assert port is not None
    with Gate(port, hold_after=40) as gate:
        base = gate.url("/v1")
        upstreams = {"local": {"kind": "openai", "base_url": base, "default_model": LOCAL_MODEL}}
        env = {"TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams).decode()}
        env["TOKENRELAY_KEEPALIVE_S"] = "1"
        workdir = tmp_path_factory.mktemp("gated_model")
        with redis_dbs.database() as url, relay_system(workdir, url, env) as system:
            yield system, gate


def listener(driver: WebDriver, n: int) -> dict[str, str]:
    el = driver.find_element(By.CSS_SELECTOR, f'[data-listener="{n}"]')
    return {
        "text": el.get_attribute("data-text") or "",
        "ended": el.get_attribute("data-ended") or "",
        "last_id": el.get_attribute("data-last-id") or "",
        "state": el.get_attribute("data-state") or "",
    }


def test_demo_page_streams_survives_a_drop_and_feeds_a_second_listener(
    browser: WebDriver, gated_model: tuple[RelaySystem, Gate], tmp_path: Path
) -> None:
    system, gate = gated_model
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    browser.get(f"{system.base_url}/")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("Tell me a long story about a dragon who learns to bake bread.")
    max_tokens = browser.find_element(By.ID, "max_tokens")
    max_tokens.clear()
    max_tokens.send_keys("160")
    browser.find_element(By.ID, "go").click()

    wait.until(lambda d: len(listener(d, 1)["text"]) > 0)
    assert gate.held.wait(120), "the model's answer passed the gate"
    # The gate holds the model mid-answer; the page shows what came before it.
    wait.until(lambda d: len(listener(d, 1)["text"]) > 10)

    # Drop the connection mid-stream: the page reconnects with Last-Event-ID.
    assert listener(browser, 1)["ended"] == ""
    dropped_at = listener(browser, 1)["last_id"]
    browser.find_element(By.CSS_SELECTOR, '[data-listener="1"] .drop').click()
    wait.until(lambda d: listener(d, 1)["state"].startswith("dropped"))
    # A second listener on the same job, joining mid-way.
    browser.find_element(By.ID, "add").click()
    wait.until(lambda d: len(listener(d, 2)["text"]) > 10)
    gate.release()
    wait.until(lambda d: listener(d, 1)["ended"] == "true" and listener(d, 2)["ended"] == "true")
    browser.save_screenshot(str(tmp_path / "demo.png"))

    job_id = browser.find_element(By.ID, "job").get_attribute("data-job-id")
    job = httpx.get(f"{system.base_url}/v1/jobs/{job_id}", timeout=10).json()
    first, second = listener(browser, 1), listener(browser, 2)
    assert job["status"] == "succeeded"
    assert len(job["text"]) > 40
    # Nothing repeated, nothing lost: after the drop and resume, and for the late joiner.
    assert first["text"] == job["text"]
    assert second["text"] == job["text"]
    assert first["last_id"] == second["last_id"] == job["last_event_id"]
    assert dropped_at and dropped_at != job["last_event_id"], "the drop came mid-stream"
    log_lines = browser.find_element(By.CSS_SELECTOR, '[data-listener="1"] .log').text
    assert "dropped by you" in log_lines
    assert (tmp_path / "demo.png").stat().st_size > 10_000
