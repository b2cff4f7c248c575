"""Schemathesis against the running API's own OpenAPI document: no 5xx, responses as documented.

Each operation of the document is one test: Hypothesis generates valid (positive) and invalid
(negative) requests from the schema, sends them to the real ``tokenrelay api`` process over a
socket and checks every response. A failure names the operation, the check and a ``curl``
command that reproduces it.

schemathesis's own pytest loader (``schemathesis.pytest.from_fixture``) does not run on pytest 9
(it reads ``Function._nodeid``), so the operations are parametrized here from the app's document
at collection time and generated with ``APIOperation.as_strategy`` at run time.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from tests.support.system import RelaySystem
from tokenrelay.settings import Settings

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
MAX_EXAMPLES = 50
CALL_TIMEOUT_S = 10.0
"""Per request, and in total for a ``text/event-stream`` body (schemathesis stops reading one
then): a stream that never ends fails the test instead of hanging it. An NDJSON body ends with
its job, which for a generated request is the upstream server's short default reply."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
"""Not ``negative_data_rejection``: pydantic's lax mode accepts some schema-invalid values
(``"0.5"`` for a number); test_bad_input.py pins those down one by one."""


def _operations() -> list[str]:
    document = create_app(Settings()).openapi()
    return [f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops]


OPERATIONS = _operations()

CHAT = [{"role": "user", "content": "hi"}]
SERVED: dict[str, tuple[dict[str, Any] | None, str]] = {
    "POST /v1/chat/completions": ({"model": "m", "messages": CHAT, "stream": True}, SSE),
    "POST /v1/completions": ({"model": "m", "prompt": "hi", "stream": True}, SSE),
    "POST /api/chat": ({"model": "m", "messages": CHAT}, NDJSON),
    "POST /api/generate": ({"model": "m", "prompt": "hi"}, NDJSON),
    "GET /metrics": (None, "text/plain"),
}
"""Operations whose 200 is not JSON (or not always): a request (its JSON body) and the media
type it is answered with, which the document must list."""

UNDOCUMENTED_MEDIA_TYPE: dict[str, str] = {}
"""Known bugs: operations whose served media type the document does not list. Their fuzzing
leaves out ``content_type_conformance`` (so it still catches 5xx and the rest) and the strict
xfail below pins the bug."""


def _media_type_cases() -> list[Any]:
    marks = {
        k: [pytest.mark.xfail(strict=True, reason=v)] for k, v in UNDOCUMENTED_MEDIA_TYPE.items()
    }
    return [pytest.param(label, marks=marks.get(label, [])) for label in sorted(SERVED)]


@pytest.fixture(scope="module")
def api_schema(system: RelaySystem) -> schemathesis.BaseSchema:
    """The document the running server serves, as schemathesis loads it."""
    return schemathesis.openapi.from_url(f"{system.base_url}/openapi.json", timeout=10)


def test_the_running_server_documents_the_same_operations(system: RelaySystem) -> None:
    served = httpx.get(f"{system.base_url}/openapi.json", timeout=10).json()
    labels = [f"{m.upper()} {path}" for path, ops in served["paths"].items() for m in ops]
    assert sorted(labels) == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_and_never_answers_5xx(
    api_schema: schemathesis.BaseSchema, label: str
) -> None:
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    checks = CHECKS
    if label in UNDOCUMENTED_MEDIA_TYPE:
        checks = [c for c in CHECKS if c is not content_type_conformance]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: schemathesis.Case[Any]) -> None:
        # On a failure schemathesis raises a report: the check, the response, a curl command.
        case.call_and_validate(checks=checks, timeout=CALL_TIMEOUT_S)

    run()


@pytest.mark.parametrize("label", _media_type_cases())
def test_a_non_json_200_is_documented_with_its_media_type(system: RelaySystem, label: str) -> None:
    method, path = label.split(" ", 1)
    body, media_type = SERVED[label]
    with httpx.Client(base_url=system.base_url, timeout=CALL_TIMEOUT_S) as client:
        response = client.request(method, path, json=body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].split(";")[0] == media_type
        documented = client.get("/openapi.json").json()["paths"][path][method.lower()]
    assert media_type in documented["responses"]["200"]["content"]
