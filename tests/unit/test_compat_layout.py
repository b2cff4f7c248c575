"""The drop-in protocols' shared bits live in one place each, and their modules stay small."""

from __future__ import annotations

import re
from pathlib import Path

API = Path(__file__).resolve().parents[2] / "api"
MAX_LINES = 400


def test_drop_in_modules_stay_under_400_lines() -> None:
    long = {
        path.relative_to(API).as_posix(): lines
        for path in (API / "compat").rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_shared_bits_are_defined_once() -> None:
    """The SSE keep-alive (``compat/base.py``), the Responses id prefix and the replay of a
    job's stored events (``reading.py``): no other API module spells them out."""
    found: dict[str, set[str]] = {"keep-alive": set(), "resp_": set(), "events.read(": set()}
    for path in API.rglob("*.py"):
        text = path.read_text()
        name = path.relative_to(API).as_posix()
        if re.search(r'b": keep-alive', text):
            found["keep-alive"].add(name)
        if re.search(r'["\']resp_', text):
            found["resp_"].add(name)
        if "events.read(" in text:
            found["events.read("].add(name)
    assert found == {
        "keep-alive": {"compat/base.py", "encoding.py"},  # encoding.py: /v1/jobs/{id}/events
        "resp_": {"reading.py"},
        "events.read(": {"reading.py"},
    }
