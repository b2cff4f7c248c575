"""The pump: one attempt's upstream stream read into the job's events, through the stop filter."""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog

from tokenrelay.errors import UpstreamTimeout
from tokenrelay.settings import UpstreamConfig
from tokenrelay.store.events import JobStream
from tokenrelay.store.leases import Leases
from tokenrelay.upstreams.base import (
    Finish,
    GenerationRequest,
    TextDelta,
    ToolCallDelta,
    Upstream,
    Usage,
)
from tokenrelay.wire import DeltaEvent, FinishReason, ToolCallEvent, merge_tool_call
from worker.outcome import Tally
from worker.stops import StopFilter

log = structlog.get_logger("tokenrelay.worker")

FINISH_REASONS: frozenset[str] = frozenset({"stop", "length", "tool_calls"})


async def pump(
    upstream: Upstream,
    config: UpstreamConfig,
    request: GenerationRequest,
    *,
    upstream_name: str,
    stream: JobStream,
    stops: StopFilter,
    tally: Tally,
    leases: Leases,
    max_events: int,
) -> None:
    """Read the upstream into the stream until it ends, a stop sequence matches, or the job
    reaches ``max_events`` (``finish_reason`` ``length``). Raises ``UpstreamTimeout`` when it
    goes silent: no first token within ``first_token_s`` (retryable), or no token for
    ``idle_s`` (not); the upstream's own ``UpstreamError``s; and the store's errors, from
    publishing."""
    loop = asyncio.get_running_loop()
    if config.max_concurrency is not None:
        # Wait for a slot of the upstream's limit, shared by every worker process.
        await leases.acquire_slot(stream.job_id, upstream_name, config.max_concurrency)
    chunks = upstream.stream(request)
    silence = Silence(config.first_token_s, config.idle_s)
    try:
        async with silence:
            async for chunk in chunks:
                if isinstance(chunk, TextDelta):
                    if tally.first_token is None:
                        tally.first_token = time.monotonic()
                    tally.text_chunks += 1
                    publish_text(stream, tally, stops.feed(chunk.text))
                    if stops.stopped:
                        tally.finish_reason = "stop"
                        return  # closing the iterator closes the upstream request
                elif isinstance(chunk, ToolCallDelta):
                    publish_tool_call(stream, tally, chunk)
                elif isinstance(chunk, Usage):
                    tally.upstream_usage = chunk
                elif isinstance(chunk, Finish):
                    tally.finish_reason = _finish_reason(chunk.reason)
                if isinstance(chunk, TextDelta | ToolCallDelta):
                    silence.last = loop.time()
                    if tally.events >= max_events:
                        # Truncated by our limit, as by max_tokens: the answer is cut short.
                        tally.finish_reason = "length"
                        log.warning("job_event_limit", events=tally.events)
                        return
    except TimeoutError:
        if silence.last is None:
            raise UpstreamTimeout(f"no first token within {config.first_token_s:g} s") from None
        raise UpstreamTimeout(f"no token for {config.idle_s:g} s", retryable=False) from None
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        await leases.release_slot(stream.job_id)


class Silence:
    """The first-token and idle timeouts as one lazy timer (``async with``): raises
    ``TimeoutError`` when no token came within ``first_s`` of the start, or for ``idle_s``
    after the last one (``last``, in the loop's time, set by the reader).

    A token only stores its time. The timer, when it rings, sets itself again at the last
    token's time plus ``idle_s`` and ends the wait only after that much silence: the deadline
    is the same as rescheduling ``asyncio.timeout`` on every token, without a timer heap
    operation per delta. Cancels the task as ``asyncio.timeout`` does, and tells its own
    cancel from any other one.
    """

    def __init__(self, first_s: float, idle_s: float) -> None:
        self.first_s = first_s
        self.idle_s = idle_s
        self.last: float | None = None
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> Silence:
        assert self._task is not None
        self._cancelling = self._task.cancelling()
        self._handle = self._loop.call_at(self._loop.time() + self.first_s, self._ring)
        return self

    def _ring(self) -> None:
        if self.last is not None:
            due = self.last + self.idle_s
            if due > self._loop.time():
                self._handle = self._loop.call_at(due, self._ring)
                return
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and self._task is not None:
            # Our cancel, and no other pending: the wait timed out.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError


def _finish_reason(reason: str) -> FinishReason:
    return reason if reason in FINISH_REASONS else "stop"  # type: ignore[return-value]


def publish_text(stream: JobStream, tally: Tally, text: str) -> None:
    """Publish ``text`` as the next ``delta`` (nothing when empty)."""
    if not text:
        return
    stream.publish(DeltaEvent("", tally.deltas, text), text=text)
    tally.deltas += 1
    tally.events += 1
    tally.text_chars += len(text)


def flush_held(stream: JobStream, tally: Tally, stops: StopFilter) -> None:
    """At the end of the attempts: what the stop filter held back is text after all, up to a
    stop sequence completed inside it (then the job finishes ``stop``, unless it failed)."""
    publish_text(stream, tally, stops.flush())
    if stops.stopped:
        tally.finish_reason = "stop"


def publish_tool_call(stream: JobStream, tally: Tally, chunk: ToolCallDelta) -> None:
    """Publish a tool call fragment; the record's ``tool_calls`` are the calls merged so far."""
    fragment = ToolCallEvent("", chunk.index, chunk.arguments, chunk.id or None, chunk.name)
    merge_tool_call(tally.tool_calls, fragment)
    calls = [tally.tool_calls[i].data() for i in sorted(tally.tool_calls)]
    stream.publish(fragment, fields={"tool_calls": orjson.dumps(calls).decode()})
    tally.events += 1
