"""The process supervisor (tokenrelay/processes.py): readiness, stop order, SIGKILL after the
grace, and no child outliving a supervisor killed outright."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from tokenrelay.processes import Group, NotReady, free_port, http_ok, redis_ping, start

PY = sys.executable


def test_wait_ready_passes_once_the_check_does(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = start(
        "echo", [PY, "-c", "import time; print('up', flush=True); time.sleep(30)"], log=log
    )
    try:
        child.wait_for_log("up", timeout_s=10)
        assert child.running()
    finally:
        assert child.stop(grace_s=5) == -signal.SIGTERM


def test_wait_ready_raises_with_the_log_when_the_child_exits(tmp_path: Path) -> None:
    child = start("dies", [PY, "-c", "print('no config'); raise SystemExit(3)"], log=tmp_path / "l")
    with pytest.raises(NotReady, match=r"dies exited with status 3 while starting:\nno config"):
        child.wait_ready(lambda: False, timeout_s=10)


def test_wait_ready_raises_after_the_deadline(tmp_path: Path) -> None:
    child = start("slow", [PY, "-c", "import time; time.sleep(30)"], log=tmp_path / "l")
    try:
        with pytest.raises(NotReady, match=r"slow did not become ready within 0\.2 s"):
            child.wait_ready(lambda: False, timeout_s=0.2)
        assert child.running(), "a child that is not ready is left to the caller"
    finally:
        child.stop(grace_s=5)


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    code += "print('ignoring', flush=True); time.sleep(30)"
    child = start("stubborn", [PY, "-c", code], log=tmp_path / "l")
    child.wait_for_log("ignoring", timeout_s=10)
    killed: list[str] = []
    t0 = time.monotonic()
    assert child.stop(grace_s=0.3, on_kill=lambda c: killed.append(c.name)) == -signal.SIGKILL
    assert killed == ["stubborn"] and time.monotonic() - t0 < 5
    assert child.stop() == -signal.SIGKILL, "stopping again only reaps"


def test_a_group_stops_the_last_started_first(tmp_path: Path) -> None:
    order = tmp_path / "order"
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(order)!r}, 'a').write(sys.argv[1] + ' ')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(30)\n"
    )
    with Group(grace_s=5) as group:
        for name in ("first", "second", "third"):
            group.start(name, [PY, "-c", code, name], log=tmp_path / f"{name}.log")
        for child in group.children:
            child.wait_for_log("up", timeout_s=10)
        assert group.first_exited() is None
    assert order.read_text().split() == ["third", "second", "first"]
    assert group.children == []


def test_children_die_with_a_supervisor_killed_outright(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from tokenrelay.processes import start\n"
        f"child = start('sleeper', [{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    supervisor = start("supervisor", [PY, "-c", code], log=tmp_path / "sup.log")
    try:
        supervisor.wait_ready(lambda: supervisor.log_text().strip().isdigit(), timeout_s=20)
        child = psutil.Process(int(supervisor.log_text()))
        assert child.is_running() and os.getpgid(child.pid) == child.pid, "a session of its own"
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
        _, alive = psutil.wait_procs([child], timeout=10)
        assert alive == []
    finally:
        supervisor.stop(grace_s=1)


def test_probes(tmp_path: Path) -> None:
    port = free_port()
    assert not redis_ping(port)
    assert not http_ok(f"http://127.0.0.1:{port}/healthz")
    server = start(
        "http", [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path
    )
    try:
        server.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/"), timeout_s=10)
        assert not redis_ping(port)
    finally:
        server.stop(grace_s=5)
