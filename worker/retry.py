"""When to retry an upstream failure: exponential backoff with full jitter, bounded in count
and total time, honouring ``Retry-After``."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tokenrelay.errors import UpstreamError

BASE_S = 0.25
CAP_S = 8.0


@dataclass
class RetryPolicy:
    """Retries for one job. Callers only ask while nothing was published: after the first
    delta a retry would show readers text twice, so those failures end the job."""

    max_attempts: int
    budget_s: float
    started: float
    attempts: int = 1

    def next_delay(self, exc: UpstreamError, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if not exc.retryable or self.attempts >= self.max_attempts:
            return None
        backoff = random.uniform(0, min(CAP_S, BASE_S * 2 ** (self.attempts - 1)))
        retry_after = getattr(exc, "retry_after", None)
        delay = max(backoff, retry_after) if retry_after is not None else backoff
        if now + delay - self.started > self.budget_s:
            return None  # the upstream asks for longer than we may wait
        self.attempts += 1
        return delay
