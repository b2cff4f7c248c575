"""``tokenrelay dev``: one command to a working system, and nothing left behind when it stops."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.helpers import parse_sse
from tests.support.system import ROOT
from tokenrelay.processes import free_port, start

pytestmark = pytest.mark.e2e


class Dev:
    """A ``tokenrelay dev`` process; ``proc`` is its child (``send_signal``, ``wait``, ``kill``)."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")}
        env["XDG_DATA_HOME"] = str(home)
        self.log = home.parent / f"dev-{self.port}.log"
        home.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "tokenrelay.cli", "dev", "--port", str(self.port)]
        self.proc = start("dev", args, log=self.log, env=env, cwd=ROOT)

    def wait_ready(self) -> None:
        self.proc.wait_ready(lambda: "ready." in self.log.read_text(), timeout_s=240, poll_s=0.2)

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


@pytest.fixture
def dev_home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def generate(base: str) -> tuple[str, str]:
    body = {"messages": [{"role": "user", "content": "Say hello."}], "options": {"max_tokens": 20}}
    job_id = httpx.post(f"{base}/v1/jobs", json=body, timeout=10).json()["id"]
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=120) as response:
        events, _ = parse_sse(response.read())
    assert events[-1].type == "end"
    return job_id, "".join(e.data["text"] for e in events if e.type == "delta")


def test_dev_runs_everything_and_ctrl_c_leaves_nothing_behind(dev_home: Path) -> None:
    dev = Dev(dev_home)
    try:
        dev.wait_ready()
        children = dev.tree()
        names = " ".join(" ".join(p.cmdline()) for p in children)
        for part in (
            "valkey-server",
            "llama_cpp.server",
            "tokenrelay.cli worker",
            "tokenrelay.cli api",
        ):
            assert part in names, names
        page = httpx.get(f"{dev.base}/", timeout=10)
        assert page.status_code == 200
        assert "Drop connection" in page.text
        job_id, text = generate(dev.base)
        assert text
        dev.proc.send_signal(signal.SIGINT)
        assert dev.proc.wait(60) == 0
        _, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], [p.cmdline() for p in alive]
        assert "stopped" in dev.log.read_text()

        # Append-only persistence: a restarted dev still has the job.
        again = Dev(dev_home)
        try:
            again.wait_ready()
            job = httpx.get(f"{again.base}/v1/jobs/{job_id}", timeout=10).json()
            assert job["text"] == text and job["status"] == "succeeded"
        finally:
            again.proc.send_signal(signal.SIGINT)
            again.proc.wait(60)
    finally:
        if dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGKILL)


def test_dev_killed_outright_takes_its_children_with_it(dev_home: Path) -> None:
    dev = Dev(dev_home)
    children: list[psutil.Process] = []
    try:
        dev.wait_ready()
        children = dev.tree()
        assert len(children) >= 4
        dev.proc.send_signal(signal.SIGKILL)
        dev.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=20)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        for child in children:
            if child.is_running():
                child.kill()
