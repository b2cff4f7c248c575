"""The peers benchmark (ops/bench/peers.py), scaled down, runs as a test so it cannot rot.

It asserts that every figure is measured for tokenrelay and both peers and that nothing is left
running, not how fast anything is. It creates .venv-peers (pip, from PyPI) when it is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.system import ROOT

FIGURES = (
    "fan-out: listeners x deltas/s",
    "fan-out: deliveries/s",
    "fan-out: % delivered live",
    "fan-out: delivery latency p50 / p99",
    "fan-out: listeners with every delta once, in order",
    "resume: reconnect -> first replayed event",
    "resume: tries given exactly the missed deltas",
    "late listener, after the end",
)


@pytest.mark.timeout(300)
def test_quick_peers_benchmark_prints_every_figure_for_all_three(tmp_path: Path) -> None:
    # Its own process group, so a timeout takes down every server it started too.
    proc = subprocess.Popen(
        [sys.executable, "ops/bench/peers.py", "--quick", "--workdir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"peers.py --quick took over 240 s:\n{out[-2000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("figure"))
    assert [cell.strip() for cell in header.split("|")][1:] == [
        "tokenrelay",
        "resumable-stream",
        "resumable-sse",
    ]
    for figure in FIGURES:
        (line,) = [row for row in lines if row.startswith(figure)]
        cells = [cell.strip() for cell in line.split("|")]
        assert len(cells) == 4 and all(cells), line
        assert all(any(ch.isdigit() for ch in cell) for cell in cells[1:]), line
    assert "cores" in out and "peers' venv: resumable-stream 0.2.0" in out
    assert "processes left running: none" in out
