"""The Durable Streams protocol's pure parts: offsets, JSON mode, SSE events, job messages,
cursors, pages of a read, and the settings' defaults."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from api.compat.durable import protocol as p
from api.compat.durable.reading import PAGE_BYTES, advance, live_batch, page_of
from api.compat.durable.sources import job_message
from tokenrelay.settings import Settings
from tokenrelay.store.events import StoredEvent
from tokenrelay.store.streams import Entry, Snapshot
from tokenrelay.wire import EventId


def test_offsets_are_event_ids_fixed_width_and_sort_as_they_do() -> None:
    ids = [EventId((1700000000000, 0)), EventId((1700000000000, 12)), EventId((1700000000001, 0))]
    offsets = [p.offset_of(i) for i in ids]
    assert offsets[0] == "0001700000000000_0000000000000000"
    assert sorted(offsets) == offsets and len(set(map(len, offsets))) == 1
    assert [p.parse_offset(o) for o in offsets] == ids
    assert p.parse_offset("-1") == p.START
    for bad in ("", "now", "abc", "1-2", "1_", "_1", "../1_1", "1_2_3", "9" * 21 + "_0"):
        assert p.parse_offset(bad) is None, bad


@pytest.mark.parametrize(
    ("body", "messages"),
    [
        (b'{"event": "created"}', [b'{"event":"created"}']),
        (b'[{"a": 1}, {"b": 2}]', [b'{"a":1}', b'{"b":2}']),
        (b"[[1,2], [3,4]]", [b"[1,2]", b"[3,4]"]),
        (b"[[[1,2,3]]]", [b"[[1,2,3]]"]),
        (b'"\xc3\xbc"', ['"ü"'.encode()]),
        (b"123456789012345678901234567890", [b"1.2345678901234568e+29"]),  # as JSON.parse
    ],
)
def test_json_mode_flattens_one_level(body: bytes, messages: list[bytes]) -> None:
    assert p.json_messages(body, create=False) == messages


def test_json_mode_refuses_bad_json_and_empty_appends() -> None:
    assert p.json_messages(b"[]", create=True) == []
    with pytest.raises(p.InvalidJson):
        p.json_messages(b"[]", create=False)
    with pytest.raises(p.InvalidJson):
        p.json_messages(b"{nope", create=False)
    assert p.json_body([b"1", b'{"a":2}']) == b'[1,{"a":2}]'


def test_sse_data_is_json_text_or_base64_by_content_type() -> None:
    assert (
        p.sse_data([b'{"a":1}', b"2"], "application/json") == b'event: data\ndata:[{"a":1},2]\n\n'
    )
    assert p.sse_data([b"line1\nline2"], "text/plain") == b"event: data\ndata:line1\ndata:line2\n\n"
    raw = bytes(range(256))
    event = p.sse_data([raw[:100], raw[100:]], "application/octet-stream").decode()
    lines = [line.removeprefix("data:") for line in event.split("\n") if line.startswith("data:")]
    assert base64.b64decode("".join(lines)) == raw


def test_a_control_event_names_the_offset_and_closure() -> None:
    open_ = p.control("0_1", closed=False, up_to_date=True, client_cursor=None).decode()
    fields = orjson.loads(open_.split("data:", 1)[1])
    assert fields["streamNextOffset"] == "0_1" and fields["upToDate"] is True
    assert fields["streamCursor"].isdigit()
    closed = p.control("0_1", closed=True, up_to_date=True, client_cursor=None).decode()
    assert orjson.loads(closed.split("data:", 1)[1]) == {
        "streamNextOffset": "0_1",
        "streamClosed": True,
        "upToDate": True,
    }


def test_cursors_never_repeat_the_clients() -> None:
    now = p.cursor(None)
    assert int(now) == int((time.time() - p.CURSOR_EPOCH_S) // p.CURSOR_INTERVAL_S)
    assert int(p.cursor(now)) > int(now)
    assert p.cursor("1") == now  # behind: the current interval
    assert p.cursor("junk") == now


def test_a_job_event_is_one_json_message() -> None:
    entry = Entry(EventId((5, 1)), "delta", b'{"text":"hi \\"x\\""}')
    assert orjson.loads(job_message(entry)) == {
        "type": "delta",
        "data": {"text": 'hi "x"'},
        "id": "5-1",
    }


def test_headers_and_values_of_the_protocol() -> None:
    assert p.closed_flag("TRUE") and p.closed_flag("true")
    assert not any(p.closed_flag(v) for v in (None, "false", "1", "yes", ""))
    assert p.valid_ttl("0") and p.valid_ttl("3600")
    assert not any(p.valid_ttl(v) for v in ("03600", "+3600", "3600.0", "3.6e3", "", " 1"))
    assert p.parse_safe_integer(str(2**53 - 1)) == 2**53 - 1
    assert p.parse_safe_integer(str(2**53)) is None and p.parse_safe_integer("1e3") is None
    assert p.etag("/s", "-1", "0_1", True).endswith(':c"')


def test_the_stream_settings_defaults() -> None:
    settings = Settings()
    assert settings.stream_long_poll_s == 20.0
    assert settings.stream_retention_s == 7 * 24 * 3600
    assert settings.stream_max_message_bytes == 256 * 1024


class _Messages:
    """A source's pure half: ``m`` entries are messages, ``c`` closes."""

    def message(self, entry: Entry) -> bytes | None:
        return entry.data if entry.type == "m" else None

    def carries(self, kind: str) -> bool:
        return kind == "m"

    def closes(self, kind: str) -> bool:
        return kind == "c"


def _snap(entries: list[Entry], tail: EventId, closed: bool) -> Snapshot:
    return Snapshot("text/plain", tail, closed, entries)


def test_a_page_reaches_the_tail_and_then_closure() -> None:
    ids = [EventId((10, i)) for i in range(4)]
    entries = [Entry(i, "m", b"%d" % n) for n, i in enumerate(ids[:3])] + [Entry(ids[3], "c", b"")]
    page = page_of(_Messages(), _snap(entries, ids[2], True), p.START)
    assert page.messages == [b"0", b"1", b"2"]
    assert (page.next, page.up_to_date, page.closed, page.seen) == (ids[2], True, True, ids[3])
    # Partway (more entries beyond the page): neither up to date nor closed.
    partial = page_of(_Messages(), _snap(entries[:1], ids[2], True), p.START)
    assert (partial.next, partial.up_to_date, partial.closed) == (ids[0], False, False)
    # At the tail of an open stream: no data, the tail, up to date.
    empty = page_of(_Messages(), _snap([], ids[2], False), ids[2])
    assert (empty.messages, empty.next, empty.up_to_date, empty.closed) == ([], ids[2], True, False)


def test_a_page_stops_at_its_byte_budget_but_carries_one_message_whatever_its_size() -> None:
    big = b"x" * (PAGE_BYTES - 10)
    ids = [EventId((20, i)) for i in range(3)]
    entries = [Entry(ids[0], "m", big), Entry(ids[1], "m", b"y" * 20), Entry(ids[2], "m", b"z")]
    page = page_of(_Messages(), _snap(entries, ids[2], False), p.START)
    assert page.messages == [big] and page.next == ids[0] and not page.up_to_date
    huge = [Entry(ids[0], "m", b"x" * (PAGE_BYTES + 1))]
    assert page_of(_Messages(), _snap(huge, ids[0], False), p.START).messages == [huge[0].data]


def test_a_live_batch_is_a_data_event_then_a_control_and_says_when_closed() -> None:
    last = EventId((30, 0))
    events = [StoredEvent("31-0", "m", b'{"a":1}'), StoredEvent("32-0", "c", b"")]
    out = live_batch(_Messages(), "application/json", last, None, events).decode()
    data, control, _ = out.split("\n\n")
    assert data == 'event: data\ndata:[{"a":1}]'
    assert orjson.loads(control.split("data:", 1)[1]) == {
        "streamNextOffset": p.offset_of(EventId((31, 0))),
        "streamClosed": True,
        "upToDate": True,
    }
    assert advance(_Messages(), events, last) == (EventId((31, 0)), True)
    # Only the close: no data event, the reader's offset stays.
    only_close = [StoredEvent("33-0", "c", b"")]
    out = live_batch(_Messages(), "text/plain", last, None, only_close).decode()
    assert out.startswith("event: control") and p.offset_of(last) in out
    assert advance(_Messages(), only_close, last) == (last, True)
