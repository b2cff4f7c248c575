"""Upstream adapters, one per wire format, and the factory that picks one for a config.

The adapters are imported when an upstream is made, not with this package, so importing it
costs nothing until an upstream is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from tokenrelay.settings import UpstreamConfig
    from tokenrelay.upstreams.base import Upstream


def make_upstream(client: httpx.AsyncClient, config: UpstreamConfig) -> Upstream:
    """The adapter for ``config.kind``, sending through ``client``."""
    if config.kind == "ollama":
        from tokenrelay.upstreams.ollama import OllamaUpstream

        return OllamaUpstream(client, config)
    if config.kind == "openai":
        from tokenrelay.upstreams.openai import OpenAIUpstream

        return OpenAIUpstream(client, config)
    from tokenrelay.upstreams.sse import SSEUpstream

    return SSEUpstream(client, config)


__all__ = ["make_upstream"]
