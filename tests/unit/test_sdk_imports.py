"""The SDK stands on the wire schema alone: importing it loads nothing of the server."""

from __future__ import annotations

import json
import subprocess
import sys

import tokenrelay.client
import tokenrelay.wire

SERVER_MODULES = (
    "fastapi",
    "starlette",
    "arq",
    "redis",
    "prometheus_client",
    "uvicorn",
    "pydantic_settings",
    "structlog",
    "api",
    "worker",
    "tokenrelay.store",
    "tokenrelay.upstreams",
    "tokenrelay.settings",
    "tokenrelay.fanout",
    "tokenrelay.metrics",
    "tokenrelay.cli",
)

# A fresh interpreter: this one has long imported the server for other tests.
PROBE = """
import json, sys
import tokenrelay.client
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_sdk_imports_nothing_of_the_server() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    loaded = json.loads(out)
    assert "tokenrelay.client" in loaded
    server = [
        name
        for name in loaded
        if any(name == root or name.startswith(f"{root}.") for root in SERVER_MODULES)
    ]
    assert server == []


def test_the_sdk_events_and_job_parts_are_the_wire_schema() -> None:
    for name in (
        "StartEvent",
        "DeltaEvent",
        "ToolCallEvent",
        "UsageEvent",
        "ErrorEvent",
        "EndEvent",
        "Usage",
        "JobError",
        "ToolCall",
    ):
        assert getattr(tokenrelay.client, name) is getattr(tokenrelay.wire, name), name
    assert set(tokenrelay.client.__all__) <= set(dir(tokenrelay.client))
