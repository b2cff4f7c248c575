"""The benchmark suite, scaled down to seconds, runs as a test so it cannot rot.

It asserts that every figure is measured and printed beside its baseline, not how fast
anything is: speed is judged by the full run (ops/bench/run.py), not by timed tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.system import ROOT


def test_quick_benchmark_prints_every_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "ops/bench/run.py", "--quick", "--runs", "1", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    assert "cores" in table and "median of 1 run" in table
    for figure in (
        "submit -> first delta at consumer",
        "upstream write -> consumer read per delta",
        "deltas/s one worker publishes",
        "deliveries/s to 50 SSE listeners",
        "50 concurrent jobs on one worker",
        "reconnect with Last-Event-ID",
        "Redis memory per finished job",
        "first delta, new connections",
        "POST /v1/jobs round trip vs GET 404",
        "worker CPU per published delta",
        "API CPU per delivered event",
    ):
        (line,) = [row for row in table.splitlines() if row.startswith(figure)]
        cells = [cell.strip() for cell in line.split("|")]
        assert len(cells) == 4 and all(cells), line
        assert any(ch.isdigit() for ch in cells[1]), line


def test_quick_scale_benchmark_prints_every_configuration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "ops/bench/scale.py", "--quick", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")]
    for row in rows:
        assert float(row[3].replace(",", "")) > 0 and float(row[5].replace(",", "")) > 0


def test_quick_durable_streams_benchmark_prints_every_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "ops/bench/durable.py", "--quick", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for figure in ("appends/s", "catch-up reads/s", "deliveries/s to 100 SSE readers"):
        (line,) = [row for row in result.stdout.splitlines() if row.startswith(figure)]
        cells = [cell.strip().replace(",", "") for cell in line.split("|")]
        assert len(cells) == 3 and float(cells[1]) > 0 and float(cells[2]) > 0, line
