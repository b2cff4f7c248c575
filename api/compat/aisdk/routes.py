"""The AI SDK's chat transport (``DefaultChatTransport``, ``useChat({ resume: true })``), backed
by jobs: ``POST /v1/ai-sdk/chat`` starts a chat's generation, ``GET .../{chat id}/stream``
replays and follows the one running, ``POST .../{chat id}/cancel`` stops it.

The chat's current generation is a pointer on the queue Redis, set in the very MULTI/EXEC that
enqueues its job, so any API process serves any chat. The job runs to its end whether or not a
client stays connected.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import StreamingResponse

from api.compat.aisdk.render import HEADERS, UIMessageRenderer, resumed
from api.compat.aisdk.schemas import CHAT_ID_CHARS, ChatRequest
from api.compat.base import COMPAT_FIELD
from api.compat.jobs import JOB_HEADER, rendered, responses, submit_drop_in_once
from api.deps import IdempotencyKey, RelayDep, TenantDep
from api.encoding import SSE_MEDIA_TYPE, JSONBody
from api.errors import ApiError
from api.jobs import ERRORS, cancelled
from api.state import Relay
from api.submission import OnEnqueue
from tokenrelay.errors import quoted
from tokenrelay.store.chats import Chats, Generation
from tokenrelay.wire import TERMINAL_STATUSES, ZERO_ID

router = APIRouter(prefix="/v1/ai-sdk", tags=["ai-sdk"])

CREATED = responses(
    "the answer as a UI message stream (v1), until `data: [DONE]`; the job's own failure is an "
    "`error` part in it",
    (SSE_MEDIA_TYPE,),
    {
        400: "malformed request",
        409: "Idempotency-Key reused with another body, or still in use (retry)",
        413: "request body or prompt too large",
        422: "invalid request, a malformed message part, or an unknown upstream",
        429: "this key's rate limit",
        503: "the queue is full, or Redis is unreachable",
    },
)
FOLLOWED: dict[int | str, dict[str, Any]] = {
    **responses(
        "the running answer as a UI message stream: replayed from its start, then live",
        (SSE_MEDIA_TYPE,),
        {},
    ),
    204: {"description": "no generation of this API key's chat of the id is running"},
}
CANCELLED: dict[int | str, dict[str, Any]] = {
    **{status: ERRORS[status] for status in (401, 503)},
    404: {
        "model": ERRORS[404]["model"],
        "description": "this API key's chat of the id has no generation",
    },
    202: {"description": "the job, cancel requested"},
    200: {"description": "the job, which had already finished"},
}

ChatId = Annotated[str, Path(min_length=1, max_length=CHAT_ID_CHARS, description="the chat id")]


def _stream(r: Relay, job_id: str, renderer: UIMessageRenderer) -> StreamingResponse:
    return StreamingResponse(
        rendered(r, job_id, ZERO_ID, renderer),
        media_type=SSE_MEDIA_TYPE,
        headers={**HEADERS, JOB_HEADER: job_id},
    )


def _no_chat(chat_id: str) -> ApiError:
    return ApiError(404, f"no chat {quoted(chat_id)}", param="chatId")


@router.post("/chat", responses=CREATED, response_class=StreamingResponse)
async def chat(
    body: ChatRequest, r: RelayDep, tenant: TenantDep, idempotency_key: IdempotencyKey = None
) -> StreamingResponse:
    """Start the chat's next answer as a job (the chat's current generation from now on) and
    stream it as the AI SDK's UI message stream. Chats are per API key: another key's chat of
    the same id is another chat. An ``Idempotency-Key`` as for ``POST /v1/jobs``: the same key
    and body again follow the same answer, not a second one."""

    def point(job_id: str) -> OnEnqueue:
        return functools.partial(
            Chats(r.queue).point,
            chat_id=body.id,
            generation=Generation(tenant, job_id),
            ttl_s=r.settings.unfinished_ttl_s,
        )

    record, _ = await submit_drop_in_once(
        r, tenant, body, via="ai-sdk.chat", idempotency_key=idempotency_key, on_enqueue=point
    )
    # The client appends to the message it continues: the new parts only, under its id.
    continued = body.continued
    message_id = None if continued is None else continued.id
    return _stream(r, record.id, UIMessageRenderer(record.id, message_id))


@router.get("/chat/{chat_id:path}/stream", responses=FOLLOWED, response_model=None)
async def chat_stream(chat_id: ChatId, r: RelayDep, tenant: TenantDep) -> Response:
    """The chat's running answer (``reconnectToStream``): all of it so far with the same message
    id, then live to its end; 204 when none is running. Any number of clients may follow."""
    generation = await Chats(r.queue).current(tenant, chat_id)
    if generation is None:  # none of this key's (another key's chat of the id is not its)
        return Response(status_code=204)
    status, compat = await r.jobs.job_fields(generation.job_id, "status", COMPAT_FIELD)
    if status is None or status in TERMINAL_STATUSES:
        return Response(status_code=204, headers={JOB_HEADER: generation.job_id})
    return _stream(r, generation.job_id, resumed(generation.job_id, compat))


@router.post("/chat/{chat_id:path}/cancel", responses=CANCELLED, response_model=None)
async def chat_cancel(chat_id: ChatId, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """Stop the chat's current generation on the server (what the client's ``stop()`` only
    does locally); answers the job as ``POST /v1/jobs/{id}/cancel`` does."""
    generation = await Chats(r.queue).current(tenant, chat_id)
    if generation is None:
        raise _no_chat(chat_id)
    return await cancelled(r, generation.job_id, tenant, via="ai-sdk")
