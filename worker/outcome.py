"""What a job's run comes to: the tally its attempts keep while streaming, and the outcome."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import orjson

from tokenrelay.upstreams.base import GenerationRequest
from tokenrelay.upstreams.base import Usage as UpstreamUsage
from tokenrelay.wire import FinishReason, JobError, ToolCall, Usage, UsageSource


@dataclass
class Tally:
    """What the job's attempts have streamed so far; the pump adds to it as chunks arrive."""

    started: float = field(default_factory=time.monotonic)  # when the current attempt began
    first_token: float | None = None
    text_chunks: int = 0  # text chunks the upstream sent (stop-held ones too)
    deltas: int = 0  # delta events published
    events: int = 0  # delta and tool_call events published
    text_chars: int = 0
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)  # merged, by index
    upstream_usage: UpstreamUsage | None = None  # as the upstream reported it
    finish_reason: FinishReason = "stop"  # as the upstream (or a stop, or our limit) said

    @property
    def published(self) -> bool:
        """Whether anything reached readers: from then on a retry would show it twice."""
        return self.text_chunks > 0 or bool(self.tool_calls)

    def restart(self) -> None:
        """A new attempt begins: its timings count from now."""
        self.started = time.monotonic()

    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    def duration_s(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the job ends: its ``end`` event's reason, the ``error`` before it, and the usage
    published (which the record keeps too)."""

    finish_reason: FinishReason
    error: JobError | None = None
    usage: Usage | None = None

    @classmethod
    def failed(cls, error: JobError) -> Outcome:
        return cls("error", error)


def worker_lost(message: str = "the worker running this job stopped mid-stream") -> Outcome:
    return Outcome.failed(JobError("worker_lost", message, True))


def estimate_tokens(text: str) -> int:
    """About four characters a token: what usage says when the upstream sent none."""
    return math.ceil(len(text) / 4)


def usage_of(tally: Tally, request: GenerationRequest) -> Usage | None:
    """The usage to publish at the end: the upstream's, else an estimate when text was
    streamed (a token a text chunk), else none. Timings are from the attempt's start."""
    counted = tally.upstream_usage
    source: UsageSource = "upstream"
    if counted is None and tally.text_chunks:
        prompt_text = request.prompt or orjson.dumps(request.messages or []).decode()
        counted = UpstreamUsage(estimate_tokens(prompt_text), tally.text_chunks)
        source = "estimated"
    if counted is None:
        return None
    ttft = tally.ttft_s()
    return Usage(
        counted.prompt_tokens,
        counted.completion_tokens,
        counted.total_tokens,
        ttft_ms=None if ttft is None else round(ttft * 1000, 1),
        duration_ms=round(tally.duration_s() * 1000, 1),
        source=source,
    )
