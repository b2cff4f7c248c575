"""The Durable Streams protocol's pure parts: offsets, cursors, JSON mode, SSE events, ETags.

Offsets are Redis entry ids written ``<ms>_<seq>``, each part 16 digits: fixed width, so they
sort as strings as the ids sort, and a job's event id ``<ms>-<seq>`` maps to one offset and
back. ``-1`` (the start) and ``now`` (the tail) are the protocol's sentinels.
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson

from tokenrelay.wire import EventId

START = EventId((0, 0))
_OFFSET = re.compile(r"(\d{1,20})_(\d{1,20})")
_TTL = re.compile(r"0|[1-9]\d{0,17}")
_INTEGER = re.compile(r"\d{1,16}")
MAX_SAFE_INTEGER = 2**53 - 1
CURSOR_EPOCH_S = 1728432000  # 2024-10-09T00:00:00Z, the protocol's default
CURSOR_INTERVAL_S = 20

EXPOSED = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Producer-Epoch, "
    "Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, ETag, Content-Type, Location, "
    "Stream-TTL, Stream-Expires-At, Stream-SSE-Data-Encoding"
)
ALLOWED = (
    "Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, Stream-Expires-At, "
    "Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq"
)


def offset_of(eid: EventId) -> str:
    return f"{eid[0]:016d}_{eid[1]:016d}"


def parse_offset(raw: str) -> EventId | None:
    """The entry id an offset names (``-1``: the start); None if malformed. ``now`` is the
    caller's to resolve."""
    if raw == "-1":
        return START
    match = _OFFSET.fullmatch(raw)
    if match is None:
        return None
    try:
        return EventId.parse(f"{int(match[1])}-{int(match[2])}")
    except ValueError:
        return None


def valid_ttl(raw: str) -> bool:
    return _TTL.fullmatch(raw) is not None


def parse_safe_integer(raw: str) -> int | None:
    """A non-negative integer up to 2^53-1 in plain digits, else None."""
    if _INTEGER.fullmatch(raw) is None or int(raw) > MAX_SAFE_INTEGER:
        return None
    return int(raw)


def closed_flag(raw: str | None) -> bool:
    """``Stream-Closed`` counts only as ``true`` (any case); anything else is absent."""
    return raw is not None and raw.strip().lower() == "true"


def normalize_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def is_json(content_type: str) -> bool:
    return normalize_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    kind = normalize_type(content_type)
    return kind.startswith("text/") or kind == "application/json"


def cursor(client: str | None) -> str:
    """The live responses' cursor: the current 20 s interval since the protocol's epoch, or
    past the client's when it is not behind (so cursors never repeat for a cache)."""
    current = int((time.time() - CURSOR_EPOCH_S) // CURSOR_INTERVAL_S)
    if client is None or not client.isdigit() or int(client) < current:
        return str(current)
    jitter_s = random.randint(1, 3600)  # a cache key spread, not a secret
    return str(int(client) + max(1, -(-jitter_s // CURSOR_INTERVAL_S)))


class InvalidJson(ValueError):
    pass


def _loads(body: bytes) -> Any:
    """Parsed as ``JSON.parse`` would: integers past 64 bits become floats."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson("the body is not valid JSON") from exc


def json_messages(body: bytes, *, create: bool) -> list[bytes]:
    """A JSON-mode body as its messages: an array is flattened one level, anything else is
    one message. An empty array is no message on create and an error on append."""
    value = _loads(body)
    if isinstance(value, list):
        if not value and not create:
            raise InvalidJson("an empty JSON array appends nothing")
        return [orjson.dumps(item) for item in value]
    return [orjson.dumps(value)]


def json_body(messages: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(messages) + b"]"


def sse_event(kind: str, payload: str) -> bytes:
    """One SSE event, each line of ``payload`` its own ``data:`` line."""
    lines = payload.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return (f"event: {kind}\n" + "".join(f"data:{line}\n" for line in lines) + "\n").encode()


def sse_data(messages: list[bytes], content_type: str) -> bytes:
    """The messages as one ``data`` event: a JSON array, text, or base64 for binary."""
    if is_json(content_type):
        return sse_event("data", json_body(messages).decode())
    joined = b"".join(messages)
    if is_text(content_type):
        return sse_event("data", joined.decode(errors="replace"))
    return sse_event("data", base64.b64encode(joined).decode())


def control(
    next_offset: str, *, closed: bool, up_to_date: bool, client_cursor: str | None
) -> bytes:
    fields: dict[str, Any] = {"streamNextOffset": next_offset}
    if closed:
        fields["streamClosed"] = True
        fields["upToDate"] = True
    else:
        fields["streamCursor"] = cursor(client_cursor)
        if up_to_date:
            fields["upToDate"] = True
    return sse_event("control", orjson.dumps(fields).decode())


def etag(path: str, start: str, end: str, closed: bool) -> str:
    name = base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")
    return f'"{name}:{start}:{end}{":c" if closed else ""}"'
