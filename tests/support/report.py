"""Rows the fault matrix collects, printed at the end of the test run."""

from __future__ import annotations

from collections import Counter

MATRIX_ROWS: list[dict[str, object]] = []


def matrix_summary() -> list[str]:
    """The fault matrix as lines of text: one per cell, then the totals."""
    if not MATRIX_ROWS:
        return []
    lines = [
        f"{'topology':<8} {'fault':<14} {'phase':<12} {'ended':<24} {'s':>6} {'events':>7} "
        f"{'resumes':>7}"
    ]
    for row in MATRIX_ROWS:
        lines.append(
            f"{row['topology']!s:<8} {row['fault']!s:<14} {row['phase']!s:<12} "
            f"{row['outcome']!s:<24} {row['seconds']!s:>6} {row['events']!s:>7} "
            f"{row['reconnects']!s:>7}"
        )
    outcomes = Counter(str(row["outcome"]) for row in MATRIX_ROWS)
    events = sum(int(str(row["events"])) for row in MATRIX_ROWS)
    faults = len({(row["topology"], row["fault"], row["phase"]) for row in MATRIX_ROWS})
    lines.append(
        f"{len(MATRIX_ROWS)} cells, {faults} faults injected, {events} events checked; "
        f"ended: {dict(outcomes)}"
    )
    return lines
