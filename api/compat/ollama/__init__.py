"""Ollama's chat, generate and model list API, streamed as NDJSON: ``router``."""

from __future__ import annotations

from api.compat.ollama.routes import router

__all__ = ["router"]
