"""The SDK's follower: SSE bytes split anywhere become the wire's events, once each, in order."""

from __future__ import annotations

import pytest

from tokenrelay.client import (
    DeltaEvent,
    EndEvent,
    NotFoundError,
    ProtocolError,
    ServerError,
    StartEvent,
    StreamDisconnected,
    UsageEvent,
)
from tokenrelay.client._streaming import Follow
from tokenrelay.wire import JobError

STREAM = (
    b": keep-alive\n\n"
    b'id: 1-0\nevent: start\ndata: {"job_id":"job_a","upstream":"openai","model":"m",'
    b'"attempt":2,"previous_error":{"type":"upstream_timeout","message":"slow",'
    b'"retryable":true}}\n\n'
    b'id: 1-1\nevent: delta\ndata: {"index":0,"text":"h\xc3\xa9"}\n\n'
    b'id: 1-2\nevent: surprise\ndata: {"new":"type"}\n\n'
    b'id: 1-3\nevent: usage\ndata: {"prompt_tokens":1,"completion_tokens":2,'
    b'"total_tokens":3,"ttft_ms":4.5,"duration_ms":6.0,"source":"upstream"}\n\n'
    b'id: 1-4\nevent: end\ndata: {"finish_reason":"stop"}\n\n'
    b'id: 1-5\nevent: delta\ndata: {"index":1,"text":"after the end"}\n\n'
)
EXPECTED = [
    StartEvent("1-0", "job_a", "openai", "m", 2, JobError("upstream_timeout", "slow", True)),
    DeltaEvent("1-1", 0, "hé"),
    UsageEvent("1-3", 1, 2, 3, 4.5, 6.0, "upstream"),
    EndEvent("1-4", "stop"),
]


@pytest.mark.parametrize("cut", range(0, len(STREAM), 7))
def test_frames_split_anywhere(cut: int) -> None:
    follow = Follow("job_a", "/v1/jobs/job_a/events", None, 3)
    follow.headers()
    events = follow.feed(STREAM[:cut])
    if not follow.done:  # as the clients do: no feed after the end
        events += follow.feed(STREAM[cut:])
    assert events == EXPECTED
    assert follow.done and follow.last_id == "1-4"  # nothing past the end
    assert follow.headers()["Last-Event-ID"] == "1-4"


def test_a_frame_without_an_id_or_of_the_wrong_shape_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="without an id"):
        Follow("job_a", "/p", None, 3).feed(b'event: delta\ndata: {"index":0,"text":""}\n\n')
    with pytest.raises(ProtocolError, match="unexpected response body"):
        Follow("job_a", "/p", None, 3).feed(b'id: 1-0\nevent: delta\ndata: {"text":""}\n\n')
    with pytest.raises(ProtocolError):
        Follow("job_a", "/p", None, 3).feed(b"id: 1-0\nevent: end\ndata: not json\n\n")


def test_retry_delay_gives_up_after_max_reconnects_and_at_once_on_a_4xx() -> None:
    follow = Follow("job_a", "/p", "1-0", 2)
    assert 0 < follow.retry_delay(ServerError(500, "internal", "boom")) <= 0.1
    assert 0 < follow.retry_delay(ConnectionError("reset")) <= 0.2
    with pytest.raises(StreamDisconnected) as gave_up:
        follow.retry_delay(ConnectionError("reset"))
    assert (gave_up.value.last_event_id, gave_up.value.attempts) == ("1-0", 3)
    not_found = NotFoundError(404, "not_found_error", "no such job")
    with pytest.raises(NotFoundError):
        Follow("job_a", "/p", None, 8).retry_delay(not_found)
