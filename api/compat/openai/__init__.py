"""OpenAI's chat and (legacy) completions API, streamed and resumable: ``router``."""

from __future__ import annotations

from api.compat.openai.routes import router

__all__ = ["router"]
