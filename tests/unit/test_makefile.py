"""The Makefile's test targets install what the tests they run need."""

from __future__ import annotations

import re
from pathlib import Path

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def prerequisites(target: str) -> list[str]:
    match = re.search(rf"^{re.escape(target)}:(?!=)(.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match is not None, f"no rule for {target!r}"
    return match.group(1).split()


def test_the_test_targets_install_the_js_the_node_tests_need() -> None:
    """``test`` and ``test-fast`` both run ``tests/js`` (``node --test`` from pytest): both
    depend on ``js`` (npm ci of the committed lock files)."""
    assert "js" in prerequisites("test")
    assert "js" in prerequisites("test-fast")
