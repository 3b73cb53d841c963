"""One adapter per wire protocol; `adapter_for` picks it from the provider type."""

from __future__ import annotations

from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.base import Adapter, Endpoint, PreparedRequest, StreamProcessor
from providers.adapters.gemini import GeminiAdapter
from providers.adapters.openai_compat import OpenAICompatAdapter

_OPENAI = OpenAICompatAdapter()
_ADAPTERS: dict[str, Adapter] = {"anthropic": AnthropicAdapter(), "gemini": GeminiAdapter()}


def adapter_for(provider_type: str) -> Adapter:
    return _ADAPTERS.get(provider_type, _OPENAI)


__all__ = ["Adapter", "Endpoint", "PreparedRequest", "StreamProcessor", "adapter_for"]
