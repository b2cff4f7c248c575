"""tokenrelay: run LLM generations in the background and stream them to many clients."""

from __future__ import annotations

__version__ = "0.1.0"
