"""``tokenrelay submit``, ``tail`` and ``jobs`` as real subprocesses against a real system."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support.system import ROOT, RelaySystem
from tests.upstream_server import SCENARIOS, Scenario, UpstreamServer

HELLO = "".join(SCENARIOS["hello"].pieces)
JOB_ID = re.compile(r"^job_[A-Za-z0-9_-]{22}$")


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def run(system: RelaySystem, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", *args, "--url", system.base_url],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


def job_of(system: RelaySystem, job_id: str) -> dict[str, object]:
    response = httpx.get(f"{system.base_url}/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200
    return dict(response.json())


def test_submit_follow_prints_the_text_and_a_summary(system: RelaySystem) -> None:
    done = run(system, "submit", "hi", "--model", "hello", "--max-tokens", "50", "--follow")
    assert done.returncode == 0, done.stderr
    assert done.stdout == HELLO
    assert "waiting for the first token" not in done.stderr, "no spinner unless a terminal"
    job_line, *_, summary = done.stderr.strip().splitlines()
    job_id = job_line.removeprefix("job ")
    assert JOB_ID.match(job_id)
    assert job_of(system, job_id)["text"] == HELLO
    assert re.fullmatch(
        r"stop, \d+ tokens \(7 prompt \+ \d+ completion\), ttft \d+ ms, [\d.]+ s", summary
    )


def test_submit_prints_the_id_and_tail_prints_the_text(system: RelaySystem) -> None:
    done = run(system, "submit", "hi", "--model", "long", "--upstream", "ollama")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert JOB_ID.match(job_id) and done.stdout == f"{job_id}\n"
    tail = run(system, "tail", job_id)
    assert tail.returncode == 0, tail.stderr
    job = job_of(system, job_id)
    assert tail.stdout == job["text"] == "".join(SCENARIOS["long"].pieces)
    assert tail.stderr.strip().startswith("stop, ")
    # From an event on, the text after it; the summary still has the counts.
    events = httpx.get(f"{system.base_url}/v1/jobs/{job_id}/events", timeout=10).text
    ids = re.findall(r"^id: (\S+)$", events, flags=re.M)
    part = run(system, "tail", job_id, "--after", ids[10])
    assert part.returncode == 0
    assert part.stdout == "".join(SCENARIOS["long"].pieces[10:])  # after the start and ten deltas
    assert re.match(r"stop, \d+ tokens", part.stderr)
    for after in (ids[-1], "now"):  # at the end already: no text, the summary, success
        done = run(system, "tail", job_id, "--after", after)
        assert (done.returncode, done.stdout) == (0, "")
        assert re.match(r"stop, \d+ tokens", done.stderr)


def test_a_spinner_on_a_terminal_until_the_first_token(
    system: RelaySystem, upstream: UpstreamServer
) -> None:
    upstream.add("cli_late", Scenario(pieces=["late ", "text"], first_delay_s=1.5))
    body = {"model": "cli_late", "prompt": "hi"}
    job_id = httpx.post(f"{system.base_url}/v1/jobs", json=body, timeout=10).json()["id"]
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenrelay.cli", "tail", job_id, "--url", system.base_url],
            cwd=ROOT,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        out, _ = proc.communicate(timeout=20)
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0 and out == b"late text"
    before_text, _, after = terminal.partition(b"\r\x1b[K")
    assert b"waiting for the first token" in before_text, terminal
    assert b"waiting" not in after and after.strip().startswith(b"stop, ")


def test_a_sse_upstream_gets_a_bare_prompt(system: RelaySystem) -> None:
    done = run(system, "submit", "hello", "--upstream", "sse", "--follow")
    assert done.returncode == 0, done.stderr
    assert done.stdout == HELLO


def test_a_failed_job_exits_1_with_the_error(system: RelaySystem) -> None:
    done = run(system, "submit", "hi", "--model", "error_mid", "--follow")
    assert done.returncode == 1
    assert done.stdout == "".join(SCENARIOS["error_mid"].pieces[:3])
    assert "error: upstream_error: " in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error, ")


def test_api_errors_are_one_line_and_exit_1(system: RelaySystem) -> None:
    unknown = run(system, "tail", "job_AAAAAAAAAAAAAAAAAAAAAA")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("tokenrelay: no job") and "Traceback" not in unknown.stderr
    invalid = run(system, "submit", "hi", "--upstream", "nope")
    assert invalid.returncode == 1
    assert "invalid request" in invalid.stderr and "'nope'" in invalid.stderr


def test_jobs_lists_recent_jobs_newest_first(system: RelaySystem) -> None:
    body = {"model": "hello", "prompt": "hi"}
    ids = [
        httpx.post(f"{system.base_url}/v1/jobs", json=body, timeout=10).json()["id"]
        for _ in range(6)
    ]
    listing = run(system, "jobs", "--limit", "5")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "UPSTREAM", "MODEL", "CREATED", "FINISH"]
    listed = [row.split()[0] for row in rows]
    assert listed == ids[::-1][:5]
    assert "more: tokenrelay jobs --before " in listing.stderr
    bad = run(system, "jobs", "--limit", "0")
    assert bad.returncode == 1 and "limit" in bad.stderr


def test_ctrl_c_exits_130_and_says_how_to_resume(
    system: RelaySystem, upstream: UpstreamServer
) -> None:
    # The answer stalls after its first piece, so the job is still running when Ctrl-C comes,
    # however long the tail takes to start on a loaded machine (the test cancels it after).
    stalled = Scenario(pieces=[f"s{i} " for i in range(100)], stall_after=1, stall_s=60)
    upstream.add("cli_slow", stalled)
    job_id = run(system, "submit", "hi", "--model", "cli_slow").stdout.strip()
    with subprocess.Popen(
        [sys.executable, "-m", "tokenrelay.cli", "tail", job_id, "--url", system.base_url],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As at a terminal: a test run started in the background (a shell without job
        # control) ignores SIGINT, and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.read(3)  # "s0 ": the text is streaming
            assert first == b"s0 "
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert proc.returncode == 130
    assert f"tokenrelay tail {job_id} --after " in err.decode()
    assert job_of(system, job_id)["status"] == "running", "the job goes on without its listener"
    httpx.post(f"{system.base_url}/v1/jobs/{job_id}/cancel", timeout=10)


@pytest.mark.parametrize("command", ["api", "worker", "dev"])
def test_the_server_commands_are_unchanged(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and f"usage: tokenrelay {command}" in done.stdout
