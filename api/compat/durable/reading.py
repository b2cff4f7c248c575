"""Reading a Durable Stream: catch-up (``GET``), long-poll and SSE, over any ``Source``.

Live reads subscribe to the source's topic on the process's hub after the last entry they
read, so nothing appended after their snapshot is missed; they wake on the hub's batches and
never poll Redis.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Response
from fastapi.responses import StreamingResponse

from api.compat.durable import protocol as p
from api.compat.durable.sources import Messages, Source
from api.errors import ApiError
from tokenrelay.fanout import Hub
from tokenrelay.store.events import StoredEvent
from tokenrelay.store.streams import Entry, Snapshot
from tokenrelay.wire import EventId

PAGE = 1000
"""Entries per catch-up read; a longer stream is read on (``Stream-Up-To-Date`` absent)."""
PAGE_BYTES = 4 * 1024 * 1024
SSE_LIFETIME_S = 60.0
"""An SSE response ends after this long (the protocol's advice, so caches can collapse)."""


def missing() -> ApiError:
    return ApiError(404, "no such stream")


@dataclass(frozen=True, slots=True)
class Page:
    """The messages of a snapshot a response carries, and where the reader stands after."""

    messages: list[bytes]
    next: EventId
    up_to_date: bool
    closed: bool
    seen: EventId  # the last entry read, messages or not


def page_of(src: Messages, snap: Snapshot, after: EventId) -> Page:
    messages: list[bytes] = []
    size = 0
    last_message: EventId | None = None
    seen = after
    for entry in snap.entries:
        data = src.message(entry)
        if data is not None:
            if messages and size + len(data) > PAGE_BYTES:
                break
            messages.append(data)
            size += len(data)
            last_message = entry.id
        seen = entry.id
    nxt = snap.tail if last_message is None else last_message
    up_to_date = nxt >= snap.tail
    return Page(messages, nxt, up_to_date, snap.closed and up_to_date, max(seen, after))


def body_of(messages: list[bytes], content_type: str) -> bytes:
    return p.json_body(messages) if p.is_json(content_type) else b"".join(messages)


def _headers(content_type: str, page: Page) -> dict[str, str]:
    headers = {"Content-Type": content_type, "Stream-Next-Offset": p.offset_of(page.next)}
    if page.up_to_date:
        headers["Stream-Up-To-Date"] = "true"
    if page.closed:
        headers["Stream-Closed"] = "true"
    return headers


async def _open(src: Source, after: EventId | None) -> tuple[Snapshot, EventId]:
    """The first snapshot of a read after ``after`` (None: the tail), and where it starts."""
    snap = await src.snapshot(after, PAGE)
    if snap is None:
        raise missing()
    return snap, snap.tail if after is None else after


async def at_now(src: Source) -> Response:
    """``offset=now`` without ``live``: no data, the tail, never cached."""
    state, _ = await _open(src, None)
    headers = {
        "Content-Type": state.content_type,
        "Stream-Next-Offset": p.offset_of(state.tail),
        "Stream-Up-To-Date": "true",
        "Cache-Control": "no-store",
    }
    if state.closed:
        headers["Stream-Closed"] = "true"
    return Response(b"[]" if p.is_json(state.content_type) else b"", headers=headers)


async def catch_up(
    src: Source, path: str, start: str, after: EventId, if_none_match: str | None
) -> Response:
    snap = await src.snapshot(after, PAGE)
    if snap is None:
        raise missing()
    page = page_of(src, snap, after)
    tag = p.etag(path, start, p.offset_of(page.next), page.closed)
    if if_none_match is not None and if_none_match == tag:
        return Response(status_code=304, headers={"ETag": tag})
    headers = _headers(snap.content_type, page) | {"ETag": tag}
    return Response(body_of(page.messages, snap.content_type), headers=headers)


async def long_poll(
    src: Source,
    hub: Hub,
    path: str,
    start: str,
    after: EventId | None,
    client_cursor: str | None,
    wait_s: float,
) -> Response:
    """Data after ``after`` (None: the tail) at once if there is some, else the first that
    comes within ``wait_s``; else 204. A closed stream at its tail answers at once."""
    snap, after = await _open(src, after)
    page = page_of(src, snap, after)
    if not page.messages and not page.closed and after == snap.tail:
        async with hub.subscribe(src.topic, page.seen) as sub:
            deadline = time.monotonic() + wait_s
            woke = False
            while not woke and (remaining := deadline - time.monotonic()) > 0:
                batches = await sub.next(remaining)
                if batches is None:
                    break
                woke = any(b.events for b in batches)
            if woke:
                snap, _ = await _open(src, after)
                page = page_of(src, snap, after)
    cur = {} if page.closed else {"Stream-Cursor": p.cursor(client_cursor)}
    if not page.messages:
        at = max(after, page.next) if page.closed else after
        headers = {"Stream-Next-Offset": p.offset_of(at)}
        headers |= {"Stream-Up-To-Date": "true", **cur}
        if page.closed:
            headers["Stream-Closed"] = "true"
        return Response(status_code=204, headers=headers)
    tag = p.etag(path, start, p.offset_of(page.next), page.closed)
    headers = _headers(snap.content_type, page) | cur | {"ETag": tag}
    return Response(body_of(page.messages, snap.content_type), headers=headers)


def advance(src: Messages, events: list[StoredEvent], last: EventId) -> tuple[EventId, bool]:
    """Where a reader at ``last`` stands after ``events``, and whether the stream is closed."""
    closed = any(src.closes(e.type) for e in events)
    for stored in reversed(events):
        if src.carries(stored.type):
            return EventId.parse(stored.id), closed
    return last, closed


def live_batch(
    src: Messages,
    content_type: str,
    last: EventId,
    client_cursor: str | None,
    events: list[StoredEvent],
) -> bytes:
    """A live batch's SSE bytes for a reader at ``last``: a ``data`` event with its messages
    (if any) and a ``control`` event."""
    entries = [Entry(EventId.parse(e.id), e.type, e.data) for e in events]
    messages = [m for m in map(src.message, entries) if m is not None]
    nxt, closed = advance(src, events, last)
    data = p.sse_data(messages, content_type) if messages else b""
    return data + p.control(
        p.offset_of(nxt), closed=closed, up_to_date=True, client_cursor=client_cursor
    )


async def sse(
    src: Source, hub: Hub, after: EventId | None, client_cursor: str | None, keepalive_s: float
) -> Response:
    """The stream as Server-Sent Events from ``after`` (None: the tail): ``data`` events, each
    followed by a ``control`` event; ends after the ``control`` that says closed."""
    first, after = await _open(src, after)
    content_type = first.content_type
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if not p.is_text(content_type):
        headers["Stream-SSE-Data-Encoding"] = "base64"

    async def events(snap: Snapshot, start: EventId) -> AsyncIterator[bytes]:
        ends_at = time.monotonic() + SSE_LIFETIME_S
        while True:  # catch up, page by page
            page = page_of(src, snap, start)
            out = p.sse_data(page.messages, content_type) if page.messages else b""
            yield out + p.control(
                p.offset_of(page.next),
                closed=page.closed,
                up_to_date=page.up_to_date,
                client_cursor=client_cursor,
            )
            if page.closed:
                return
            start, last = page.seen, page.next
            if page.up_to_date:
                break
            nxt = await src.snapshot(start, PAGE)
            if nxt is None:
                return
            snap = nxt
        async with hub.subscribe(src.topic, start) as sub:
            while time.monotonic() < ends_at:
                batches = await sub.next(min(keepalive_s, max(0.0, ends_at - time.monotonic())))
                if batches is None:  # a keep-alive
                    yield p.control(
                        p.offset_of(last),
                        closed=False,
                        up_to_date=True,
                        client_cursor=client_cursor,
                    )
                    continue
                for batch in batches:
                    # Readers at the same point share a batch's rendering (``Batch.encoded``).
                    key = f"durable-sse {content_type} {last} {client_cursor}"
                    yield batch.encoded(
                        key, functools.partial(live_batch, src, content_type, last, client_cursor)
                    )
                    last, closed = advance(src, batch.events, last)
                    if closed:
                        return

    headers["Content-Type"] = "text/event-stream"  # exactly: no charset parameter
    return StreamingResponse(events(first, after), media_type=None, headers=headers)
