"""The durability bench still runs (briefly) and prints its two tables of two rows (jobs, Durable
Streams); figures are not asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ("--jobs", "4", "--deltas", "10", "--writers", "2", "--appends", "5")


def test_the_durability_bench_prints_local_and_replicated() -> None:
    out = subprocess.run(
        [sys.executable, "ops/bench/durability.py", *ARGS],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    jobs, streams = out.split("\n\n")
    assert [line.split()[0] for line in jobs.splitlines()[2:]] == ["local", "replicated"], out
    assert [line.split()[0] for line in streams.splitlines()[2:]] == ["local", "replicated"], out
