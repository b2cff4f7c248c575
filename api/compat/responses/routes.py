"""OpenAI's Responses API, ``/v1/responses``, with background mode, backed by jobs.

Each response is a job (``resp_X`` is ``job_X``): it runs to its end whether or not the client
stays, its stream is replayed by sequence number (``starting_after``) from any API process, and
it is followable at ``/v1/jobs/{id}/events`` too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.compat.jobs import (
    JOB_HEADER,
    STREAM_HEADERS,
    cancel,
    finished,
    load_record,
    rendered,
    responses,
    split_model,
    submit_drop_in_once,
    submit_responses,
)
from api.compat.responses.render import EventRenderer, response_of
from api.compat.responses.response import ResponsesView
from api.compat.responses.schemas import ResponsesRequest, conversation, input_items
from api.deps import IdempotencyKey, RelayDep, TenantDep
from api.encoding import SSE_MEDIA_TYPE, JSONBody
from api.errors import ApiError
from api.reading import stored_events
from api.schemas import ErrorBody
from api.state import Relay
from tokenrelay.errors import JobNotFound, quoted
from tokenrelay.settings import Settings
from tokenrelay.wire import TERMINAL_STATUSES, ZERO_ID, JobRecord

router = APIRouter(prefix="/v1", tags=["openai-compatible"])

CANCEL_WAIT_S = 5.0
"""How long a cancel waits for the job's end (its upstream is closed within a second), so that
it answers the cancelled Response."""

CREATED = submit_responses(
    "SSE events with `stream`; else the Response when it ends, or at once with `background`",
    ("application/json", SSE_MEDIA_TYPE),
    waiting="not streaming nor in the background",
)
CREATED[404] = {"model": ErrorBody, "description": "`previous_response_id` names no response"}
FOUND = responses(
    "the Response now; with `stream`, its events (SSE) from the start or `starting_after`",
    ("application/json", SSE_MEDIA_TYPE),
    {404: "no such response"},
)
KNOWN = responses("the Response", ("application/json",), {404: "no such response"})
DELETED = responses(
    "deleted",
    ("application/json",),
    {400: "the response has not ended", 404: "no such response"},
)

StreamQuery = Annotated[bool, Query(description="the events (SSE), replayed then live")]
AfterQuery = Annotated[
    int | None, Query(ge=0, description="with `stream`: the events numbered after this one")
]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]


def _json(body: dict[str, Any], job_id: str) -> JSONBody:
    return JSONBody(body, headers={JOB_HEADER: job_id})


async def _response(r: Relay, view: ResponsesView, record: JobRecord) -> JSONBody:
    """The Response of ``record``'s job as it is now, rendered from its stored events as the
    stream renders them (the record first: events read after it hold all it knows of)."""
    return _json(response_of(view, record, await stored_events(r, record.id)), record.id)


def _streaming(r: Relay, view: ResponsesView, starting_after: int) -> StreamingResponse:
    """The job's events, numbered from its start, those after ``starting_after`` written."""
    renderer = EventRenderer(view, starting_after=starting_after)

    async def body() -> AsyncIterator[bytes]:
        if opening := renderer.opening():
            yield opening
        async with contextlib.aclosing(rendered(r, view.job_id, ZERO_ID, renderer)) as chunks:
            async for chunk in chunks:
                yield chunk

    headers = {**STREAM_HEADERS, JOB_HEADER: view.job_id}
    return StreamingResponse(body(), media_type=SSE_MEDIA_TYPE, headers=headers)


def _takes_prompt(settings: Settings, model: str) -> bool:
    upstream, _ = split_model(settings, model)
    config = settings.upstreams.get(upstream or settings.resolved_default_upstream or "")
    return config is not None and config.kind == "sse"


async def _conversation(r: Relay, ref: str, tenant: str) -> list[dict[str, Any]]:
    """What response ``ref`` sent and answered. ``ApiError`` 404 if unknown, expired or
    another key's, 400 if it has not ended."""
    try:
        record, text = await load_record(r, ref, tenant)
    except JobNotFound:
        raise ApiError(
            404,
            f"previous response {quoted(ref)} not found (unknown, expired, or another key's)",
            param="previous_response_id",
        ) from None
    if record.status not in TERMINAL_STATUSES:
        raise ApiError(
            400,
            f"previous response {quoted(ref)} has not ended yet",
            param="previous_response_id",
        )
    return conversation(ResponsesView.of(record), record, text)


@router.post("/responses", responses=CREATED, response_model=None)
async def create_response(
    body: ResponsesRequest,
    request: Request,
    r: RelayDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A Response, as a job: SSE events with ``stream`` (``background`` or not: the job runs on
    if the client drops); without, the Response when it ends, or at once (``queued``) with
    ``background``. Every answer names the job in ``X-Tokenrelay-Job``. An ``Idempotency-Key``
    as for ``POST /v1/jobs``: the same key and body again answer the same response."""
    sent = body.model_dump(mode="json")  # what the key is bound to: the request as sent
    if body.previous_response_id:
        body.continue_from(await _conversation(r, body.previous_response_id, tenant))
    if _takes_prompt(r.settings, body.model) and not body.prompt_only():
        raise ApiError(
            422,
            f"the upstream of model {quoted(body.model)} takes a prompt: give `input` as one "
            "string, without instructions, tools or previous_response_id",
            param="input",
        )
    record, replayed = await submit_drop_in_once(
        r, tenant, body, via="responses", idempotency_key=idempotency_key, request_json=sent
    )
    view = replace(ResponsesView.of(record), metadata=body.metadata or {})
    if body.stream:
        return _streaming(r, view, -1)
    if body.background:
        return (
            await _response(r, view, record)
            if replayed
            else _json(view.response("queued"), record.id)
        )
    record, _ = await finished(r, record.id, request)
    return await _response(r, view, record)


@router.get("/responses/{response_id}", responses=FOUND, response_model=None)
async def retrieve_response(
    response_id: str,
    r: RelayDep,
    tenant: TenantDep,
    stream: StreamQuery = False,
    starting_after: AfterQuery = None,
    last_event_id: LastEventId = None,
) -> Response:
    """The Response as it is now; with ``stream``, its events from the start (or after
    ``starting_after``, or ``Last-Event-ID``: a sequence number), then live to its end."""
    record, _ = await load_record(r, response_id, tenant)
    view = ResponsesView.of(record)
    if not stream:
        return await _response(r, view, record)
    if starting_after is None and last_event_id:
        if not last_event_id.isdigit():
            raise ApiError(
                400,
                f"Last-Event-ID {quoted(last_event_id)} is not a sequence number",
                param="Last-Event-ID",
            )
        starting_after = int(last_event_id)
    return _streaming(r, view, -1 if starting_after is None else starting_after)


@router.post("/responses/{response_id}/cancel", responses=KNOWN, response_model=None)
async def cancel_response(
    response_id: str, request: Request, r: RelayDep, tenant: TenantDep
) -> JSONBody:
    """Cancel a queued or running response (its upstream is closed within a second) and answer
    it cancelled; a response that has ended is answered as it is."""
    record, _ = await load_record(r, response_id, tenant)
    if await cancel(r, record, request, wait_s=CANCEL_WAIT_S, via="responses"):
        record, _ = await load_record(r, response_id, tenant)
    return await _response(r, ResponsesView.of(record), record)


@router.delete("/responses/{response_id}", responses=DELETED, response_model=None)
async def delete_response(response_id: str, r: RelayDep, tenant: TenantDep) -> JSONBody:
    """Forget a response that has ended: its record, text and events."""
    record, _ = await load_record(r, response_id, tenant)
    if record.status not in TERMINAL_STATUSES:
        raise ApiError(400, "the response has not ended: cancel it first")
    await r.jobs.delete(record.id)
    body = {"id": ResponsesView.of(record).id, "object": "response", "deleted": True}
    return _json(body, record.id)


@router.get("/responses/{response_id}/input_items", responses=KNOWN, response_model=None)
async def list_input_items(
    response_id: str,
    r: RelayDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=256)] = None,
) -> JSONBody:
    """The items the response's request gave as input (not those of the conversation it
    continued), newest first by default, ``limit`` a page, after the item ``after``."""
    record, _ = await load_record(r, response_id, tenant)
    items = input_items(ResponsesView.of(record), record)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise ApiError(400, f"no input item {quoted(after)} in this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    body = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
        "has_more": len(items) > limit,
    }
    return _json(body, record.id)
