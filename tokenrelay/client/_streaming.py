"""Following a job's event stream: reading its SSE frames into the wire's events, and the
resume rules (``Last-Event-ID``, backoff, when to give up) both clients' ``stream`` loops share.

No I/O here: the clients own the connections and the sleeping, so one follower serves the
blocking and the async client alike.
"""

from __future__ import annotations

import logging
import random

from tokenrelay.client._exceptions import APIError, ProtocolError, StreamDisconnected
from tokenrelay.client._models import Job, parsed
from tokenrelay.sse import ServerSentEvent, SSEDecoder
from tokenrelay.wire import TERMINAL_STATUSES, Event, decode

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "MAX_RECONNECTS",
    "STREAM_READ_TIMEOUT_S",
    "Follow",
]

# stdlib logging, as libraries do: an unconfigured structlog would print to the caller's stdout.
log = logging.getLogger("tokenrelay.client")

MAX_RECONNECTS = 8
"""Consecutive failed connections a stream tolerates (no event in between) before giving up."""
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
STREAM_READ_TIMEOUT_S = 45.0
"""A stream's read timeout: the API sends a keep-alive after at most 15 s of silence."""


def _frame_event(sse: ServerSentEvent) -> Event | None:
    return decode(sse.event, sse.id or "", sse.data)


class Follow:
    """One resumable follow of a job's events (at ``path``, after the event id ``after``).

    A new connection resumes with ``Last-Event-ID`` set to the last complete event's id; the
    server answers exactly the events after it, so nothing is lost or repeated. Only complete
    frames are dispatched: bytes of a frame a cut left unfinished are dropped with the decoder.
    """

    def __init__(self, job_id: str, path: str, after: str | None, max_reconnects: int) -> None:
        self.path = path
        self.job_id = job_id
        self.last_id = after
        self.max_reconnects = max_reconnects
        self.failures = 0
        self.done = False
        self._decoder = SSEDecoder()

    def headers(self) -> dict[str, str]:
        """The headers of a new connection; it starts a fresh decoder."""
        self._decoder = SSEDecoder()
        headers = {"Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        return headers

    def feed(self, chunk: bytes) -> list[Event]:
        """The events ``chunk`` completes, in order; the last one may be ``end``. An event
        of a type this version does not know is skipped (its id still counts). Raises
        ``ProtocolError`` for a frame without an id or with data not of its type's shape."""
        events: list[Event] = []
        for sse in self._decoder.feed(chunk):
            if not sse.id:
                raise ProtocolError(f"an event of {self.job_id!r} without an id")
            event = parsed(_frame_event, sse)
            self.last_id, self.failures = sse.id, 0
            if event is not None:
                events.append(event)
            if sse.event == "end":
                self.done = True
                break
        return events

    def complete(self, job: Job) -> bool:
        """Whether a response that closed without ``end`` closed because nothing is left.

        The API closes at once, with no events, a stream resumed at the job's ``end``; any
        other response that ends without ``end`` was cut short.
        """
        return job.status in TERMINAL_STATUSES and job.last_event_id == self.last_id

    def retry_delay(self, cause: BaseException) -> float:
        """Count a failed connection: the delay before the next, or raise when none is left
        (``cause`` itself when another try cannot help, else ``StreamDisconnected``)."""
        if isinstance(cause, APIError) and not (cause.status == 429 or cause.status >= 500):
            raise cause  # 404, 410, ...: another try cannot help
        self.failures += 1
        if self.failures > self.max_reconnects:
            raise StreamDisconnected(self.job_id, self.last_id, self.failures) from cause
        # Exponential, capped, with "equal jitter": listeners cut off together spread out.
        ceiling = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2.0 ** (self.failures - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if isinstance(cause, APIError) and cause.retry_after is not None:
            delay = max(delay, min(cause.retry_after, 30.0))
        log.info(
            "stream of %s dropped (%s); reconnect %d of %d in %.2f s after %s",
            self.job_id,
            cause,
            self.failures,
            self.max_reconnects,
            delay,
            self.last_id,
        )
        return delay
