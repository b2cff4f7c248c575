"""OpenAI's Responses API, with background mode, streamed and resumable: ``router``."""

from __future__ import annotations

from api.compat.responses.routes import router

__all__ = ["router"]
