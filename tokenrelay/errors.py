"""The one exception tree of tokenrelay.

    RelayError
    ├── UpstreamError                 a model endpoint failed; ``error_type`` names the event type
    │   ├── UpstreamUnavailable       connection refused, DNS, connection dropped before a byte
    │   ├── UpstreamStatus            an HTTP error status (``status``, ``body``)
    │   ├── UpstreamTimeout           connect, first-token, idle or whole-job deadline passed
    │   ├── UpstreamProtocol          the endpoint sent something its wire format does not allow
    │   └── UpstreamReportedError     the endpoint sent an error event mid-stream
    ├── JobNotFound                   no such job (or not yours, or expired)
    ├── InvalidEventId                a resume point that is malformed or was never issued
    ├── EventIdExpired                a resume point older than what is still kept
    ├── StreamGone                    a Durable Stream deleted but kept for its forks (410)
    ├── Fenced                        this attempt no longer owns the job (reaped, or ended before)
    └── StoreUnavailable              Redis refused or failed a write past the retry budget

``UpstreamError`` subclasses carry ``retryable``: whether trying again could succeed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # events.py quotes with this module's helper: no import cycle at run time
    from tokenrelay.wire import ErrorType


QUOTE_CHARS = 64


def clipped(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` cut to its first ``limit`` characters, marked ``...`` when cut: for a value a
    client sent that is named, unquoted, in an error (a field path in ``param``)."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """How an error message quotes a value a client sent (an id, a name, a header): its
    ``repr``, of its first ``limit`` characters only and marked as cut when longer, so that a
    4 MB header never makes a 4 MB answer. Every message quoting client input goes through it.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... (cut, {len(text)} characters)"


class RelayError(Exception):
    """Base of every error tokenrelay raises on purpose."""


class UpstreamError(RelayError):
    error_type: ErrorType = "upstream_error"
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class UpstreamUnavailable(UpstreamError):
    error_type = "upstream_unavailable"
    retryable = True


class UpstreamStatus(UpstreamError):
    error_type = "upstream_error"

    def __init__(self, status: int, body: str, *, retry_after: float | None = None) -> None:
        retryable = status in (408, 425, 429) or status >= 500
        super().__init__(f"upstream answered HTTP {status}: {body[:300]!r}", retryable=retryable)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    error_type = "upstream_timeout"
    retryable = True


class UpstreamProtocol(UpstreamError):
    error_type = "upstream_protocol"


class UpstreamReportedError(UpstreamError):
    error_type = "upstream_error"


class JobNotFound(RelayError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {quoted(job_id)}")
        self.job_id = job_id


class InvalidEventId(RelayError):
    pass


class EventIdExpired(RelayError):
    pass


class StreamGone(RelayError):
    """A Durable Stream that was deleted while forks of it remained: gone, not missing."""

    def __init__(self) -> None:
        super().__init__("the stream was deleted (its forks remain)")


class Fenced(RelayError):
    """The job's status hash names another owner: stop publishing at once."""


class StoreUnavailable(RelayError):
    """A write to Redis kept failing with transient errors for the whole retry budget
    (``TOKENRELAY_WRITE_RETRY_S``); ``__cause__`` is the last error."""
