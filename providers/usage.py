"""Token usage as every provider reports it, brought to one shape.

`input` always includes cached and image tokens (as OpenAI's `prompt_tokens`
does) so `input * in_price + output * out_price` is the whole bill unless a
cached-input price applies; `cached_input` and `image` are the parts of
`input` a provider reported separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NormalisedUsage:
    input: int = 0
    output: int = 0
    image: int = 0
    cached_input: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's `usage` object, for chunks and bodies built by the translating adapters."""
        out: dict[str, Any] = {
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
        }
        if self.cached_input or self.image:
            details: dict[str, int] = {"cached_tokens": self.cached_input}
            if self.image:
                details["image_tokens"] = self.image
            out["prompt_tokens_details"] = details
        return out


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def from_openai(usage: Mapping[str, Any]) -> NormalisedUsage:
    """OpenAI and every OpenAI-compatible server (vLLM, Together, Groq, Mistral, DeepSeek, llama.cpp)."""
    details = usage.get("prompt_tokens_details") or {}
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    if not cached:
        cached = _int(usage.get("prompt_cache_hit_tokens"))  # DeepSeek's name for it
    image = _int(details.get("image_tokens")) if isinstance(details, Mapping) else 0
    return NormalisedUsage(
        input=_int(usage.get("prompt_tokens")),
        output=_int(usage.get("completion_tokens")),
        image=image,
        cached_input=cached,
    )


def from_anthropic(usage: Mapping[str, Any]) -> NormalisedUsage:
    """Anthropic's `input_tokens` excludes cache reads and writes; ours includes them."""
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    return NormalisedUsage(
        input=_int(usage.get("input_tokens")) + cache_read + cache_write,
        output=_int(usage.get("output_tokens")),
        cached_input=cache_read,
    )


def from_gemini(meta: Mapping[str, Any]) -> NormalisedUsage:
    """Gemini's `usageMetadata`; thinking tokens are billed as output, so they count as output."""
    image = 0
    for d in meta.get("promptTokensDetails") or ():
        if isinstance(d, Mapping) and d.get("modality") == "IMAGE":
            image += _int(d.get("tokenCount"))
    return NormalisedUsage(
        input=_int(meta.get("promptTokenCount")),
        output=_int(meta.get("candidatesTokenCount")) + _int(meta.get("thoughtsTokenCount")),
        image=image,
        cached_input=_int(meta.get("cachedContentTokenCount")),
    )
