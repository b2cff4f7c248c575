"""``GET /v1/jobs``: the caller's recent jobs, newest first, paged by a creation-time cursor."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import RelayDep, TenantDep
from api.encoding import JSONBody
from api.errors import ApiError
from api.schemas import ErrorBody
from tokenrelay.errors import quoted
from tokenrelay.store.jobs import Position

router = APIRouter(prefix="/v1")

MAX_LIMIT = 100

# The index scores each job id by its creation time in ms. Several jobs can share a millisecond,
# so a page ends at a (score, id) position: ids of equal score sort by bytes, as Redis orders them.
# ASCII digits only (``\d`` takes any Unicode digit, which ``int`` would then parse), matched in
# full (``$`` would let a trailing newline through).
_CURSOR = re.compile(r"([0-9]{1,15})(?::(job_[A-Za-z0-9_-]{1,64}))?")


class JobSummary(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    upstream: str
    model: str | None
    created_at: str
    finished_at: str | None
    finish_reason: str | None
    last_event_id: str | None


class JobList(BaseModel):
    object: Literal["list"]
    data: list[JobSummary]
    has_more: bool
    next_before: str | None


@router.get(
    "/jobs",
    response_model=JobList,
    responses={
        401: {"model": ErrorBody, "description": "missing or wrong API key"},
        422: {"model": ErrorBody, "description": "bad `limit` or `before`"},
        503: {"model": ErrorBody, "description": "the job store is unreachable"},
    },
)
async def list_jobs(
    r: RelayDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="jobs per page")] = 20,
    before: Annotated[
        str | None,
        Query(
            description="only jobs created before this: a time in ms since the epoch, "
            "or the `next_before` of the previous page"
        ),
    ] = None,
) -> JSONBody:
    """The caller's recent jobs (the last 1000 it created), newest first.

    Jobs whose status has expired are left out. ``has_more`` says whether older jobs remain;
    pass ``next_before`` as ``before`` to get them.
    """
    position = None if before is None else _parse_cursor(before)
    rows, has_more = await r.jobs.recent(tenant, position, limit)
    data = [_summary(fields) for fields, _ in rows]
    next_before = None
    if has_more and rows:
        fields, score = rows[-1]
        next_before = f"{score}:{fields['id']}"
    return JSONBody(
        {"object": "list", "data": data, "has_more": has_more, "next_before": next_before}
    )


def _parse_cursor(raw: str) -> Position:
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise ApiError(
            422,
            f"before: {quoted(raw)} is neither a time in ms nor a `next_before` cursor",
            param="before",
        )
    job_id = match[2]
    return int(match[1]), None if job_id is None else job_id.encode()


def _summary(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "id": fields["id"],
        "status": fields["status"],
        "upstream": fields.get("upstream", ""),
        "model": fields.get("model") or None,
        "created_at": fields.get("created_at", ""),
        "finished_at": fields.get("finished_at"),
        "finish_reason": fields.get("finish_reason"),
        "last_event_id": fields.get("last_event_id"),
    }
