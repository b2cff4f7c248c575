"""One cancellation path: every cancel route goes through ``api.cancellation.request_cancel``."""

from __future__ import annotations

import ast
from pathlib import Path

API = Path(__file__).resolve().parents[2] / "api"


def test_only_request_cancel_cancels_a_job() -> None:
    """``/v1/jobs/{id}/cancel``, the Responses API's cancel and the AI SDK chat's cancel share
    ``request_cancel``: no other module of the API cancels a job or signals its worker."""
    callers = set()
    for path in API.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if node.func.attr == "signal_cancel" or (
                    node.func.attr == "cancel"
                    and isinstance(owner, ast.Attribute)
                    and owner.attr == "jobs"
                ):
                    callers.add(path.relative_to(API).as_posix())
    assert callers == {"cancellation.py"}
    uses = {
        path.relative_to(API).as_posix()
        for path in API.rglob("*.py")
        if "request_cancel(" in path.read_text() and path.name != "cancellation.py"
    }
    assert uses == {"jobs.py", "compat/jobs.py"}  # the AI SDK's cancel answers as jobs.py's
