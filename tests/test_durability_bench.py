"""The durability bench still runs (briefly) and prints its two rows; figures are not asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_durability_bench_prints_local_and_replicated() -> None:
    out = subprocess.run(
        [sys.executable, "ops/bench/durability.py", "--jobs", "4", "--deltas", "10"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["local", "replicated"], out
