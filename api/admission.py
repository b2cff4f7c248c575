"""Admission control for new jobs: prompt size, per-key rate, queue depth. One round trip."""

from __future__ import annotations

import time
from typing import Any

from api.errors import ApiError
from api.state import Relay


def prompt_chars(prompt: str | None, messages: list[Any] | None) -> int:
    """Characters of text a job sends upstream (message contents, text parts included)."""
    if prompt is not None:
        return len(prompt)
    total = 0
    for message in messages or []:
        content = message.get("content") if isinstance(message, dict) else message.content
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(
                len(str(part.get("text", ""))) for part in content if isinstance(part, dict)
            )
    return total


async def admit(r: Relay, tenant: str, chars: int) -> None:
    """Raise ``ApiError`` unless a new job may be queued now.

    413 for a prompt over ``max_prompt_chars``; 429 with ``Retry-After`` when the key has
    submitted ``rate_limit_per_min`` jobs this minute; 503 with ``Retry-After`` when the queue
    holds ``max_queue_depth`` jobs.
    """
    settings = r.settings
    if chars > settings.max_prompt_chars:
        raise ApiError(
            413,
            f"the prompt has {chars} characters; the limit is {settings.max_prompt_chars}",
            param="messages",
        )
    depth, submitted = await r.job_queue.admission(tenant, count=bool(settings.rate_limit_per_min))
    if settings.rate_limit_per_min and submitted > settings.rate_limit_per_min:
        now = time.time()
        retry_after = max(1, int(60 - now % 60) + 1)
        raise ApiError(
            429,
            f"this key may submit {settings.rate_limit_per_min} jobs a minute",
            headers={"Retry-After": str(retry_after)},
        )
    if depth >= settings.max_queue_depth:
        raise ApiError(
            503,
            f"the queue is full ({depth} jobs waiting); try again shortly",
            headers={"Retry-After": "1"},
        )
