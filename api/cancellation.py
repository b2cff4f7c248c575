"""Cancelling a job: the one path every cancel route takes (``/v1/jobs/{id}/cancel``, the
Responses API's and the AI SDK chat's)."""

from __future__ import annotations

import structlog

from api.state import Relay
from tokenrelay.wire import TERMINAL_STATUSES, now_rfc3339

log = structlog.get_logger("tokenrelay.api")


async def request_cancel(r: Relay, job_id: str, status: str, *, via: str) -> bool:
    """Cancel job ``job_id`` (now in ``status``): a queued one ends at once; a running one's
    worker is signalled and closes its upstream within a second. False, and nothing done, when
    the job had already ended. ``via`` names the route for the log."""
    if status in TERMINAL_STATUSES:
        return False
    if not await r.jobs.cancel(job_id, now_rfc3339()):
        await r.control.signal_cancel(job_id)  # a worker has it
    log.info("job_cancel_requested", job_id=job_id, via=via)
    return True
