"""Forks: a ``PUT`` with ``Stream-Forked-From`` makes a stream holding its source's messages
up to the fork offset (copied, with their ids: a fork's offsets are its source's), then its
own. A sub-offset takes part of the next request's messages too: that many bytes of its body,
or that many of its JSON batch's messages."""

from __future__ import annotations

import re
from urllib.parse import unquote

from api.compat.durable import protocol as p
from api.errors import ApiError
from api.state import Relay
from tokenrelay.errors import StreamGone
from tokenrelay.keys import durable_topic
from tokenrelay.store.streams import MESSAGE, MORE, PAGE, Entry, ForkSpec
from tokenrelay.wire import EventId

PREFIX = "/v1/stream/"
MAX_COPIED = 100_000
"""Messages a fork may take from its source; a longer one is refused (413)."""
_SUB_OFFSET = re.compile(r"0|[1-9]\d{0,15}")


def sub_offset(raw: str | None, forked: bool) -> int:
    """``Stream-Fork-Sub-Offset`` (0 when absent); 400 when malformed or without a fork."""
    if raw is None:
        return 0
    if not forked:
        raise ApiError(400, "Stream-Fork-Sub-Offset needs Stream-Forked-From")
    if _SUB_OFFSET.fullmatch(raw) is None:
        raise ApiError(400, f"Stream-Fork-Sub-Offset is a whole number, got {raw!r}")
    return int(raw)


async def _copies(r: Relay, source: str, upto: EventId) -> list[Entry]:
    copied: list[Entry] = []
    after = p.START
    while True:
        page = await r.durable.messages(source, after, upto, PAGE)
        copied += page
        if len(copied) > MAX_COPIED:
            raise ApiError(413, f"a fork takes at most {MAX_COPIED} messages of its source")
        if len(page) < PAGE:
            return copied
        after = page[-1].id


async def _part(r: Relay, source: str, at: EventId, sub: int, json: bool) -> list[Entry]:
    """The first ``sub`` bytes (or JSON messages) of the request after ``at``."""
    following = await r.durable.messages(source, at, None, sub + 1 if json else 1)
    if not following or following[0].type != MESSAGE:
        raise ApiError(400, "Stream-Fork-Sub-Offset is past the source's data")
    if json:
        batch = [following[0], *[e for e in following[1:] if e.type == MORE]][:sub]
        if len(batch) < sub or any(e.type != MORE for e in batch[1:]):
            raise ApiError(400, "Stream-Fork-Sub-Offset is past the request's messages")
        return batch
    first = following[0]
    if sub > len(first.data):
        raise ApiError(400, "Stream-Fork-Sub-Offset is past the request's bytes")
    return [Entry(first.id, MESSAGE, first.data[:sub])]


async def fork_spec(
    r: Relay,
    tenant: str,
    forked_from: str,
    headers: dict[str, str],
    *,
    content_type: str,
    ttl: str,
    expires: str,
    expires_ms: str,
    closed: bool,
) -> ForkSpec:
    """What a fork ``PUT`` asks for, checked against its source: 404 for no source, 409 for
    one deleted or of another content type, 400 for a fork point past its data."""
    name = unquote(forked_from).removeprefix(PREFIX) if forked_from.startswith(PREFIX) else ""
    source = durable_topic(name)
    try:
        fields = await r.durable.fields(source, tenant) if name else None
    except StreamGone:
        raise ApiError(409, "the source stream was deleted (its forks remain)") from None
    if fields is None:
        raise ApiError(404, f"no stream {forked_from!r} to fork")
    if content_type and p.normalize_type(content_type) != fields["ctn"]:
        raise ApiError(409, "a fork has its source's content type")
    tail = EventId.parse(fields["tail"])
    raw_offset = headers.get("stream-fork-offset")
    at = tail if raw_offset is None else p.parse_offset(raw_offset)
    if at is None or raw_offset == "-1":
        raise ApiError(400, f"malformed Stream-Fork-Offset {raw_offset!r}")
    if at > tail:
        raise ApiError(400, "Stream-Fork-Offset is past the source's tail")
    sub = sub_offset(headers.get("stream-fork-sub-offset"), True)
    if sub and raw_offset is None:
        raise ApiError(400, "Stream-Fork-Sub-Offset needs Stream-Fork-Offset")
    copied = await _copies(r, source, at)
    if sub:
        copied += await _part(r, source, at, sub, p.is_json(fields["ct"]))
    if not ttl and not expires:  # a fork without its own expiry takes its source's
        ttl, expires, expires_ms = fields.get("ttl", ""), fields.get("exp", ""), ""
        expires_ms = fields.get("exp_ms", "") if expires else ""
    chosen = content_type or fields["ct"]
    return ForkSpec(
        content_type=chosen,
        normalized=p.normalize_type(chosen),
        ttl=ttl,
        expires_at=expires,
        expires_ms=expires_ms,
        closed=closed,
        source=source,
        forked_from=forked_from,
        given_offset="" if raw_offset is None else p.offset_of(at),
        offset=p.offset_of(at),
        sub_offset=str(sub),
        tail=copied[-1].id if copied else at,
        copied=copied,
    )
