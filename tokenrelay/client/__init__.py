"""The Python SDK: submit, follow (resuming on its own), get, cancel and list jobs over HTTP.

``Client`` and ``AsyncClient`` have the same methods; the async ones are coroutines and
``AsyncClient.stream`` is an async iterator. The events ``stream`` yields, and the ``Usage``,
``JobError`` and ``ToolCall`` a ``Job`` holds, are the wire schema's own (``tokenrelay.wire``).
The errors form one tree under ``ClientError`` (see ``_exceptions``); no message or ``repr``
ever holds the API key.

The SDK stands on the wire schema alone: importing it imports nothing of the server (no
FastAPI, arq, Redis, settings or upstream adapters).

    _exceptions   the error tree, and how an answer or a transport failure becomes one
    _models       JobHandle, Job, JobSummary, JobList
    _streaming    the follower: SSE frames to events, resume with Last-Event-ID, backoff
    _client       Client and AsyncClient
"""

from __future__ import annotations

from tokenrelay.client._client import DEFAULT_URL, AsyncClient, Client
from tokenrelay.client._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    GoneError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
    StreamDisconnected,
    UnprocessableEntityError,
)
from tokenrelay.client._models import Job, JobHandle, JobList, JobSummary
from tokenrelay.wire import (
    DeltaEvent,
    EndEvent,
    ErrorEvent,
    Event,
    JobError,
    StartEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
    UsageEvent,
)

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "DeltaEvent",
    "EndEvent",
    "ErrorEvent",
    "Event",
    "GoneError",
    "Job",
    "JobError",
    "JobHandle",
    "JobList",
    "JobSummary",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "StartEvent",
    "StreamDisconnected",
    "ToolCall",
    "ToolCallEvent",
    "UnprocessableEntityError",
    "Usage",
    "UsageEvent",
]
