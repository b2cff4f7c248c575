"""Ollama's ``/api/chat``, ``/api/generate`` and ``/api/tags``, backed by jobs.

Each request becomes a job whose events ``render`` turns into Ollama's stream: NDJSON by
default, one object with ``"stream": false``. The ``X-Tokenrelay-Job`` header names the job, so
a client that drops can resume it at ``/v1/jobs/{id}/events``: the job runs on regardless.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from api.compat.jobs import (
    JOB_HEADER,
    LISTED,
    catalog,
    finished,
    split_model,
    streaming,
    submit_drop_in_once,
    submit_responses,
)
from api.compat.ollama.render import (
    LineRenderer,
    OllamaView,
    final_body,
    loaded_body,
    tags_body,
)
from api.compat.ollama.schemas import ChatRequest, GenerateRequest, OllamaRequest
from api.deps import IdempotencyKey, RelayDep, TenantDep
from api.encoding import NDJSON_MEDIA_TYPE, JSONBody
from api.state import Relay
from tokenrelay.wire import ZERO_ID

router = APIRouter(prefix="/api", tags=["ollama-compatible"])

CREATED = submit_responses(
    'NDJSON objects, the last with `"done": true`; one object with `"stream": false`',
    (NDJSON_MEDIA_TYPE, "application/json"),
    waiting='"stream": false',
)


async def _create(
    r: Relay,
    tenant: str,
    request: Request,
    body: OllamaRequest,
    idempotency_key: str | None,
    *,
    chat: bool,
) -> Response:
    view = OllamaView(body.model, chat)
    if body.empty:
        split_model(r.settings, body.model)  # an unknown upstream is still a 422
        loaded = loaded_body(view)
        if body.streams:
            return Response(orjson.dumps(loaded) + b"\n", media_type=NDJSON_MEDIA_TYPE)
        return JSONBody(loaded)
    via = "ollama.chat" if chat else "ollama.generate"
    record, _ = await submit_drop_in_once(r, tenant, body, via=via, idempotency_key=idempotency_key)
    if body.streams:
        return streaming(r, record.id, ZERO_ID, LineRenderer(view), NDJSON_MEDIA_TYPE)
    record, text = await finished(r, record.id, request)
    return JSONBody(final_body(view, record, text), headers={JOB_HEADER: record.id})


@router.post("/chat", responses=CREATED, response_model=None)
async def chat(
    body: ChatRequest,
    request: Request,
    r: RelayDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Ollama's chat, as a job: NDJSON unless ``"stream": false``; the last object has
    ``done: true``, ``done_reason``, counts and durations. ``X-Tokenrelay-Job`` names the job.
    An ``Idempotency-Key`` as for ``POST /v1/jobs``: the same key and body again follow the
    same job."""
    return await _create(r, tenant, request, body, idempotency_key, chat=True)


@router.post("/generate", responses=CREATED, response_model=None)
async def generate(
    body: GenerateRequest,
    request: Request,
    r: RelayDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Ollama's generate (a prompt), as a job; see ``POST /api/chat``."""
    return await _create(r, tenant, request, body, idempotency_key, chat=False)


@router.get("/tags", responses=LISTED, response_model=None)
async def tags(r: RelayDep, _: TenantDep) -> JSONBody:
    """Ollama's model list: each upstream's ``default_model``, named ``upstream/model``."""
    return JSONBody(tags_body(catalog(r.settings)))
