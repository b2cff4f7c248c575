"""Upstream adapters, one per wire format, and the factory that picks one for a config."""

from __future__ import annotations

import httpx

from tokenrelay.settings import UpstreamConfig
from tokenrelay.upstreams.base import Upstream
from tokenrelay.upstreams.ollama import OllamaUpstream
from tokenrelay.upstreams.openai import OpenAIUpstream
from tokenrelay.upstreams.sse import SSEUpstream


def make_upstream(client: httpx.AsyncClient, config: UpstreamConfig) -> Upstream:
    kinds: dict[str, type[OllamaUpstream | OpenAIUpstream | SSEUpstream]] = {
        "ollama": OllamaUpstream,
        "openai": OpenAIUpstream,
        "sse": SSEUpstream,
    }
    return kinds[config.kind](client, config)


__all__ = ["Upstream", "make_upstream"]
