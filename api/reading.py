"""Reading jobs, for every route that does: lookup by tenant, resume points, following events."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncGenerator, Iterator

from api.errors import ApiError
from api.state import Relay
from tokenrelay.errors import EventIdExpired, InvalidEventId, JobNotFound, quoted
from tokenrelay.fanout import Batch
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import TERMINAL_STATUSES, ZERO_ID, EventId

JOB_ID = re.compile(r"^job_[A-Za-z0-9_-]{22}$")
ID_PREFIXES = ("chatcmpl-", "cmpl-")
"""OpenAI ids made from a job id by a prefix: ``chatcmpl-job_X``, ``cmpl-job_X``."""
JOB_PREFIX = "job_"
RESPONSE_PREFIX = "resp_"
"""A Responses API id replaces the job id's prefix: ``resp_X`` is job ``job_X``."""
REPLAY_PAGE = 1000


def response_id(job_id: str) -> str:
    """The Responses API id of job ``job_id``."""
    return RESPONSE_PREFIX + job_id.removeprefix(JOB_PREFIX)


def _job_id(ref: str) -> str:
    job_id = ref
    for prefix in ID_PREFIXES:
        job_id = job_id.removeprefix(prefix)
    if job_id.startswith(RESPONSE_PREFIX):
        job_id = JOB_PREFIX + job_id.removeprefix(RESPONSE_PREFIX)
    if not JOB_ID.match(job_id):
        raise JobNotFound(ref)
    return job_id


async def load_job(r: Relay, ref: str, tenant: str) -> tuple[dict[str, str], str]:
    """The fields and text of job ``ref`` (``job_...``, or a ``chatcmpl-``/``cmpl-``/``resp_``
    id made from one). Raises ``JobNotFound`` (404) when unknown, expired or another key's."""
    job_id = _job_id(ref)
    found = await r.jobs.get_job(job_id)
    if found is None or not secrets.compare_digest(found[0].get("tenant", ""), tenant):
        raise JobNotFound(ref)
    return found


async def require_job(r: Relay, ref: str, tenant: str) -> str:
    """The job id of ``ref`` if the job exists and is the tenant's: one small read (no text),
    for routes that only follow a job. Raises ``JobNotFound`` (404) otherwise."""
    job_id = _job_id(ref)
    (owner,) = await r.jobs.job_fields(job_id, "tenant")
    if owner is None or not secrets.compare_digest(owner, tenant):
        raise JobNotFound(ref)
    return job_id


async def resume_point(
    r: Relay, job_id: str, after: str | None, last_event_id: str | None
) -> EventId:
    """Where to resume: ``?after`` wins over ``Last-Event-ID``; none is the first event;
    ``now`` means new events only. ``ApiError`` 400 for a malformed or never issued id, 410 for
    one older than what is kept, naming the parameter the client used."""
    param, raw = ("after", after) if after is not None else ("Last-Event-ID", last_event_id)
    if raw is None or raw == "":
        return ZERO_ID
    if raw == "now":
        return await r.events.last_id(job_id)
    try:
        start = EventId.parse(raw)
    except ValueError:
        raise ApiError(400, f"malformed event id {quoted(raw)}", param=param) from None
    try:
        await r.events.check_resume_point(job_id, start)
    except InvalidEventId as exc:
        raise ApiError(400, str(exc), param=param) from None
    except EventIdExpired as exc:
        raise ApiError(410, str(exc), param=param) from None
    return start


async def follow(r: Relay, job_id: str, after: EventId) -> AsyncGenerator[list[Batch] | None, None]:
    """The one follower of a job's events, for every route that streams them.

    Yields the events after ``after``, in order, each exactly once, until its ``end`` (then the
    generator is done): a replay from Redis, then live ones from the process's hub. Yields
    them as batches, which routes render (listeners handed the same batch share its encoding;
    ``events_of`` flattens them), or ``None`` after ``keepalive_s`` of silence, for a route to
    send a keep-alive or check its client.

    Stops early, without ``end``, when the job already ended at or before ``after`` or is gone.
    Raises the store's errors (``RedisError``). Close it (``contextlib.aclosing``) so its hub
    subscription ends with the response.
    """
    last = after
    while True:
        page = await r.events.read(job_id, last, count=REPLAY_PAGE)
        if page:
            yield [Batch(page)]
            last = EventId.parse(page[-1].id)
            if page[-1].type == "end":
                return
        if len(page) < REPLAY_PAGE:
            break
    async with r.hub.subscribe(job_id, last) as sub:
        # Subscribed at `last`: anything appended from now on reaches us. If the job already
        # ended at or before `last` (a resume after `end`), nothing ever will: stop now.
        status, end_id = await r.jobs.job_fields(job_id, "status", "last_event_id")
        if status is None:
            return
        if status in TERMINAL_STATUSES and end_id and EventId.parse(end_id) <= last:
            return
        while True:
            batches = await sub.next(r.settings.keepalive_s)
            if batches is None:
                yield None
            elif batches:
                yield batches
                if batches[-1].events[-1].type == "end":
                    return


async def stored_events(r: Relay, job_id: str) -> list[StoredEvent]:
    """All of the job's events stored so far, oldest first (a page of ``REPLAY_PAGE`` at a
    time), for routes that render a job's state from them."""
    events: list[StoredEvent] = []
    last = ZERO_ID
    while page := await r.events.read(job_id, last, count=REPLAY_PAGE):
        events += page
        if len(page) < REPLAY_PAGE:
            break
        last = EventId.parse(page[-1].id)
    return events


def events_of(batches: list[Batch]) -> Iterator[StoredEvent]:
    """The events of what ``follow`` yielded, in order: for routes that render event by event."""
    for batch in batches:
        yield from batch.events
