"""The AI SDK's chat transport, resumable (``useChat({ resume: true })``): ``router``."""

from __future__ import annotations

from api.compat.aisdk.routes import router

__all__ = ["router"]
