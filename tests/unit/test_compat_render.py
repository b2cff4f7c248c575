"""Unit tests of the drop-in renderers: stored events and job records in, exact bytes out.

No server and no Redis: ``api.compat.openai.render`` and ``api.compat.ollama.render`` are pure.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from api.compat.base import COMPAT_FIELD, SSE_KEEPALIVE
from api.compat.ollama.render import (
    LineRenderer,
    OllamaView,
    final_body,
    loaded_body,
    tags_body,
)
from api.compat.openai.render import (
    DONE,
    ChunkRenderer,
    OpenAIView,
    completion_body,
    models_body,
)
from tokenrelay.store.events import StoredEvent
from tokenrelay.wire import JobError, JobRecord, ToolCall, Usage

JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"
CREATED_AT = "2026-01-01T00:00:00.000Z"
CREATED = 1767225600  # CREATED_AT in Unix seconds
NOW = "2026-01-01T00:00:05.000Z"
USAGE = Usage(3, 2, 5, ttft_ms=100.0, duration_ms=1500.0, source="upstream")


def event(id_: str, type_: str, **data: Any) -> StoredEvent:
    return StoredEvent(id_, type_, orjson.dumps(data))


def start(id_: str = "1-0", attempt: int = 1) -> StoredEvent:
    return event(id_, "start", job_id=JOB, upstream="up", model="m", attempt=attempt)


def usage(id_: str) -> StoredEvent:
    return event(id_, "usage", **USAGE.data())


def end(id_: str, reason: str) -> StoredEvent:
    return event(id_, "end", finish_reason=reason)


def record(**fields: Any) -> JobRecord:
    defaults: dict[str, Any] = {
        "id": JOB,
        "status": "succeeded",
        "upstream": "up",
        "model": "m",
        "tenant": "",
        "created_at": CREATED_AT,
        "started_at": "2026-01-01T00:00:00.250Z",
        "finished_at": "2026-01-01T00:00:02.000Z",
        "finish_reason": "stop",
        "usage": USAGE,
    }
    return JobRecord(**(defaults | fields))


# --- OpenAI ----------------------------------------------------------------------------------


def view(*, chat: bool = True, include_usage: bool = True) -> OpenAIView:
    return OpenAIView(
        model="up/m", chat=chat, job_id=JOB, created=CREATED, include_usage=include_usage
    )


def frame(id_: str, obj: dict[str, Any]) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (id_.encode(), orjson.dumps(obj))


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat chunk of a view with ``include_usage``."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": f"chatcmpl-{JOB}",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "up/m",
        "choices": [choice],
        "usage": None,
        **extra,
    }


ROLE = {"role": "assistant", "content": ""}
COUNTS = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def usage_chunk(counts: dict[str, int]) -> dict[str, Any]:
    return chunk({}) | {"choices": [], "usage": counts}


def test_openai_text_deltas_then_finish_and_usage() -> None:
    renderer = ChunkRenderer(view())
    events = [
        start(),
        event("2-0", "delta", index=0, text="Hel"),
        event("3-0", "delta", index=1, text="lo"),
        usage("4-0"),
    ]
    assert renderer.render(events, None) == (
        frame("1-0", chunk(ROLE))
        + frame("2-0", chunk({"content": "Hel"}))
        + frame("3-0", chunk({"content": "lo"}))
    )
    assert renderer.render([end("5-0", "stop")], record()) == (
        frame("5-0", chunk({}, "stop", status="succeeded"))
        + frame("5-0", usage_chunk(COUNTS))
        + DONE
    )
    assert renderer.close() == b""
    assert renderer.keepalive() == SSE_KEEPALIVE == b": keep-alive\n"


def test_openai_without_include_usage_has_no_usage_fields() -> None:
    renderer = ChunkRenderer(view(include_usage=False))
    out = renderer.render([event("2-0", "delta", index=0, text="x"), usage("3-0")], None)
    out += renderer.render([end("4-0", "length")], record(finish_reason="length"))
    first = chunk({"content": "x"})
    del first["usage"]
    finish = chunk({}, "length", status="succeeded")
    del finish["usage"]
    assert out == frame("2-0", first) + frame("4-0", finish) + DONE


def test_openai_tool_call_fragments_split_over_events() -> None:
    renderer = ChunkRenderer(view(include_usage=False))
    events = [
        event("2-0", "tool_call", index=0, id="call_1", name="get_weather", arguments='{"loc'),
        event("3-0", "tool_call", index=0, arguments='ation": "Paris"}'),
        event("4-0", "tool_call", index=1, id="call_2", name="get_time", arguments="{}"),
        end("5-0", "tool_calls"),
    ]
    out = renderer.render(events, record(finish_reason="tool_calls"))

    def calls(*items: dict[str, Any]) -> dict[str, Any]:
        c = chunk({"tool_calls": list(items)})
        del c["usage"]
        return c

    finish = chunk({}, "tool_calls", status="succeeded")
    del finish["usage"]
    assert out == (
        frame(
            "2-0",
            calls(
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"loc'},
                }
            ),
        )
        + frame("3-0", calls({"index": 0, "function": {"arguments": 'ation": "Paris"}'}}))
        + frame(
            "4-0",
            calls(
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ),
        )
        + frame("5-0", finish)
        + DONE
    )


def test_openai_error_end_is_an_error_chunk_then_done() -> None:
    renderer = ChunkRenderer(view())
    events = [
        event("2-0", "delta", index=0, text="Hi"),
        event("3-0", "error", type="upstream_error", message="boom", retryable=True, status=429),
        end("4-0", "error"),
    ]
    error = {
        "message": "boom",
        "type": "upstream_error",
        "param": None,
        "code": None,
        "retryable": True,
        "status": 429,
    }
    assert renderer.render(events, record(status="failed", finish_reason="error")) == (
        frame("2-0", chunk({"content": "Hi"})) + frame("3-0", {"error": error}) + DONE
    )


def test_openai_cancelled_end_finishes_stop_with_status_cancelled() -> None:
    renderer = ChunkRenderer(view(include_usage=False))
    finish = chunk({}, "stop", status="cancelled")
    del finish["usage"]
    out = renderer.render([end("2-0", "cancelled")], record(status="cancelled"))
    assert out == frame("2-0", finish) + DONE


def test_openai_resume_repeats_no_role_chunk_and_takes_usage_from_the_record() -> None:
    renderer = ChunkRenderer(view(), resumed=True)
    out = renderer.render([event("5-0", "delta", index=3, text="!")], None)
    assert out == frame("5-0", chunk({"content": "!"}))
    # a retry's second start repeats no role chunk either
    assert renderer.render([start("6-0", attempt=2)], None) == b""
    out = renderer.render([end("7-0", "stop")], record())
    assert out == (
        frame("7-0", chunk({}, "stop", status="succeeded"))
        + frame("7-0", usage_chunk(COUNTS))
        + DONE
    )


def test_openai_resume_after_the_end_is_only_done() -> None:
    renderer = ChunkRenderer(view(), resumed=True)
    assert renderer.close() == DONE


def test_openai_usage_is_zero_when_neither_the_stream_nor_the_record_has_it() -> None:
    renderer = ChunkRenderer(view(), resumed=True)
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert renderer.render([end("2-0", "cancelled")], None) == (
        frame("2-0", chunk({}, "stop", status="cancelled")) + frame("2-0", usage_chunk(zero)) + DONE
    )


def test_openai_text_completion_chunks() -> None:
    renderer = ChunkRenderer(view(chat=False, include_usage=False))
    out = renderer.render(
        [start(), event("2-0", "delta", index=0, text="Hi"), end("3-0", "stop")], record()
    )

    def text_chunk(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": f"cmpl-{JOB}",
            "object": "text_completion",
            "created": CREATED,
            "model": "up/m",
            "choices": [choice],
            **extra,
        }

    assert out == (
        frame("2-0", text_chunk("Hi"))
        + frame("3-0", text_chunk("", "stop", status="succeeded"))
        + DONE
    )


def test_openai_skips_an_event_type_it_does_not_know() -> None:
    renderer = ChunkRenderer(view(), resumed=True)
    assert renderer.render([event("2-0", "thinking", text="hmm")], None) == b""


def test_openai_view_of_a_record_uses_what_the_request_asked() -> None:
    asked = record(extra={COMPAT_FIELD: {"model": "up/", "include_usage": True}})
    assert OpenAIView.of(asked, chat=True) == OpenAIView(
        model="up/", chat=True, job_id=JOB, created=CREATED, include_usage=True
    )
    assert OpenAIView.of(record(), chat=False) == OpenAIView(
        model="up/m", chat=False, job_id=JOB, created=CREATED, include_usage=False
    )


def urls(chat: bool = True) -> dict[str, str]:
    url = f"/v1/{'chat/completions' if chat else 'completions'}/{JOB}"
    return {"job_id": JOB, "url": url, "events_url": f"{url}/events"}


def test_openai_chat_completion_body_with_tool_calls() -> None:
    calls = (ToolCall("call_1", "get_weather", '{"location": "Paris"}'),)
    done = record(finish_reason="tool_calls", tool_calls=calls)
    message = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            }
        ],
    }
    assert completion_body(view(), done, "") == {
        "id": f"chatcmpl-{JOB}",
        "object": "chat.completion",
        "created": CREATED,
        "model": "up/m",
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        ],
        "usage": USAGE.data(),
        "status": "succeeded",
        **urls(),
    }


def test_openai_completion_bodies_queued_failed_and_text() -> None:
    queued = JobRecord(JOB, "queued", "up", "m", "", CREATED_AT)
    body = completion_body(view(), queued, "")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert (body["status"], body["usage"]) == ("queued", None)

    error = JobError("upstream_error", "boom", False, 500)
    failed = record(status="failed", finish_reason="error", usage=None, error=error)
    body = completion_body(view(chat=False), failed, "par")
    assert body == {
        "id": f"cmpl-{JOB}",
        "object": "text_completion",
        "created": CREATED,
        "model": "up/m",
        "choices": [{"index": 0, "text": "par", "logprobs": None, "finish_reason": None}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "status": "failed",
        **urls(chat=False),
        "error": {"type": "upstream_error", "message": "boom", "retryable": False, "status": 500},
    }

    cancelled = record(status="cancelled", finish_reason="cancelled")
    assert completion_body(view(), cancelled, "Hi")["choices"][0]["finish_reason"] == "stop"


def test_openai_models_body() -> None:
    assert models_body([("up", "up/m")]) == {
        "object": "list",
        "data": [{"id": "up/m", "object": "model", "created": 0, "owned_by": "up"}],
    }


# --- Ollama ----------------------------------------------------------------------------------


def ollama(*, chat: bool = True) -> OllamaView:
    return OllamaView("up/m", chat, clock=lambda: NOW)


def line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def message(content: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "up/m",
        "created_at": NOW,
        "message": {"role": "assistant", "content": content},
        **fields,
    }


TIMINGS = {
    "total_duration": 2_000_000_000,  # submit to end
    "load_duration": 250_000_000,  # submit to start
    "prompt_eval_count": 3,
    "prompt_eval_duration": 100_000_000,  # ttft_ms
    "eval_count": 2,
    "eval_duration": 1_400_000_000,  # duration_ms - ttft_ms
}


def test_ollama_text_deltas_then_done_with_counts_and_durations() -> None:
    renderer = LineRenderer(ollama())
    events = [start(), event("2-0", "delta", index=0, text="Hel"), usage("3-0")]
    assert renderer.render(events, None) == line(message("Hel", done=False))
    assert renderer.render(
        [event("4-0", "delta", index=1, text="lo"), end("5-0", "stop")], record()
    ) == (
        line(message("lo", done=False))
        + line(message("", done=True, done_reason="stop", **TIMINGS))
    )
    assert renderer.close() == b""
    assert renderer.keepalive() == line(message("", done=False))


def test_ollama_tool_call_fragments_are_merged_into_one_line() -> None:
    renderer = LineRenderer(ollama())
    events = [
        event("2-0", "tool_call", index=1, id="call_2", name="get_time", arguments="[1]"),
        event("3-0", "tool_call", index=0, id="call_1", name="get_weather", arguments='{"loc'),
        event("4-0", "tool_call", index=0, arguments='ation": "Paris"}'),
        usage("5-0"),
        end("6-0", "tool_calls"),
    ]
    calls = [
        {
            "id": "call_1",
            "function": {"index": 0, "name": "get_weather", "arguments": {"location": "Paris"}},
        },
        {
            "id": "call_2",
            "function": {"index": 1, "name": "get_time", "arguments": {"_raw": "[1]"}},
        },
    ]
    calls_line = message("", done=False)
    calls_line["message"]["tool_calls"] = calls
    assert renderer.render(events, record(finish_reason="tool_calls")) == (
        line(calls_line) + line(message("", done=True, done_reason="stop", **TIMINGS))
    )


def test_ollama_error_end_is_an_error_line_and_no_done() -> None:
    renderer = LineRenderer(ollama())
    events = [
        event("2-0", "delta", index=0, text="Hi"),
        event(
            "3-0", "error", type="upstream_timeout", message="no token for 30 s", retryable=False
        ),
        end("4-0", "error"),
    ]
    assert renderer.render(events, record(status="failed", finish_reason="error")) == (
        line(message("Hi", done=False)) + line({"error": "upstream_timeout: no token for 30 s"})
    )


def test_ollama_cancelled_end_and_generate_lines() -> None:
    renderer = LineRenderer(ollama(chat=False))
    events = [event("2-0", "delta", index=0, text="Hi"), end("3-0", "cancelled")]
    zero = TIMINGS | {"prompt_eval_count": 0, "eval_count": 0}
    zero |= {"prompt_eval_duration": 0, "eval_duration": 0}
    ended = record(status="cancelled", finish_reason="cancelled", usage=None)

    def response(text: str, **fields: Any) -> dict[str, Any]:
        return {"model": "up/m", "created_at": NOW, "response": text, **fields}

    assert renderer.render(events, ended) == (
        line(response("Hi", done=False))
        + line(response("", done=True, done_reason="cancelled", **zero))
    )


def test_ollama_done_takes_usage_from_the_record_and_survives_a_vanished_job() -> None:
    renderer = LineRenderer(ollama())
    assert renderer.render([end("2-0", "length")], record(finish_reason="length")) == line(
        message("", done=True, done_reason="length", **TIMINGS)
    )
    renderer = LineRenderer(ollama())
    zero = dict.fromkeys(TIMINGS, 0)
    assert renderer.render([end("2-0", "stop")], None) == line(
        message("", done=True, done_reason="stop", **zero)
    )


def test_ollama_final_body_with_tool_calls() -> None:
    calls = (ToolCall("call_1", "get_weather", '{"location": "Paris"}'), ToolCall(None, "f", "x"))
    done = record(finish_reason="tool_calls", tool_calls=calls)
    expected = message("", done=True, done_reason="stop", **TIMINGS)
    expected["message"]["tool_calls"] = [
        {
            "id": "call_1",
            "function": {"index": 0, "name": "get_weather", "arguments": {"location": "Paris"}},
        },
        {"function": {"index": 1, "name": "f", "arguments": {"_raw": "x"}}},
    ]
    assert final_body(ollama(), done, "") == expected


@pytest.mark.parametrize("chat", [True, False])
def test_ollama_final_body_of_text(chat: bool) -> None:
    body = final_body(ollama(chat=chat), record(finish_reason="length"), "Hello")
    content = (
        {"message": {"role": "assistant", "content": "Hello"}} if chat else {"response": "Hello"}
    )
    assert body == {
        "model": "up/m",
        "created_at": NOW,
        **content,
        "done": True,
        "done_reason": "length",
        **TIMINGS,
    }


def test_ollama_loaded_and_tags_bodies() -> None:
    assert loaded_body(ollama()) == message("", done=True, done_reason="load")
    assert tags_body([("up", "up/m")]) == {
        "models": [
            {
                "name": "up/m",
                "model": "up/m",
                "modified_at": "1970-01-01T00:00:00Z",
                "size": 0,
                "digest": hashlib.sha256(b"up/m").hexdigest(),  # the contract: of the name
                "details": {
                    "parent_model": "",
                    "format": "",
                    "family": "up",
                    "families": ["up"],
                    "parameter_size": "",
                    "quantization_level": "",
                },
            }
        ]
    }
