"""Prices in integer micro-units per 1M tokens, and where they come from.

Three sources, strongest first: the institution's contract price written in
the org file, litellm's bundled per-token price map for commercial models
(USD list prices), and nothing, which is refused at config time so a request
can never reach a model nobody can bill for. Self-hosted models always need a
price in the file (an internal price), because no public list knows it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from providers.usage import NormalisedUsage

MICROS = 1_000_000
PriceSource = Literal["contract", "internal", "litellm"]

# Provider type -> litellm key prefixes tried in order ("" = the bare upstream name).
_LITELLM_PREFIXES: dict[str, tuple[str, ...]] = {
    "openai": ("", "openai/"),
    "anthropic": ("", "anthropic/"),
    "gemini": ("gemini/", ""),
    "together": ("together_ai/",),
    "groq": ("groq/",),
    "mistral": ("mistral/",),
    "deepseek": ("deepseek/",),
}
SELF_HOSTED_TYPES = frozenset({"vllm", "openai-compatible"})


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-units of the institution's currency per 1M tokens."""

    input_per_mtok: int
    output_per_mtok: int
    cached_input_per_mtok: int | None = None
    source: PriceSource = "contract"

    def cost_micros(self, usage: NormalisedUsage) -> int:
        """ceil((in*in_price + out*out_price) / 1M); cached input at its own price when one is known."""
        cached = min(usage.cached_input, usage.input) if self.cached_input_per_mtok is not None else 0
        cached_price = self.cached_input_per_mtok or 0
        total = (
            (usage.input - cached) * self.input_per_mtok
            + cached * cached_price
            + usage.output * self.output_per_mtok
        )
        return -(-total // MICROS)

    def max_with(self, other: Price) -> Price:
        """The dearer of two prices on each side: what an estimate must reserve when either may serve."""
        return Price(
            max(self.input_per_mtok, other.input_per_mtok),
            max(self.output_per_mtok, other.output_per_mtok),
            None,
            self.source,
        )


def price_to_micros(value: Decimal | float | int | str) -> int:
    """A price per million tokens (e.g. 0.05) to integer micro-units, rounding half up.

    Prices may come from float sources (YAML, litellm's map) and a sub-micro remainder is
    noise there; budget and grant amounts go through `core.money.to_micro`, which is exact
    and refuses such a remainder instead."""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return int((d * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def per_token_to_micros_per_mtok(cost_per_token: float) -> int:
    """litellm's USD-per-token float (2.5e-06) to micro-USD per 1M tokens (2_500_000)."""
    d = Decimal(repr(cost_per_token)) * MICROS * MICROS
    return int(d.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _cost_map_path() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def litellm_cost_map() -> Mapping[str, Any]:
    """litellm's bundled price map, exactly what `litellm.model_cost` holds offline.

    Read straight from the JSON file litellm ships (the file it loads when
    LITELLM_LOCAL_MODEL_COST_MAP=True) because importing litellm costs
    seconds of start-up; the import is the fallback if the file moved.
    """
    path = _cost_map_path()
    if path is not None:
        with path.open("rb") as f:
            data: dict[str, Any] = json.load(f)
        return data
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return dict(litellm.model_cost)


def litellm_price(provider_type: str, upstream: str) -> Price | None:
    """The list price for a commercial model, or None when litellm does not know it."""
    prefixes = _LITELLM_PREFIXES.get(provider_type)
    if not prefixes:
        return None
    cost_map = litellm_cost_map()
    for prefix in prefixes:
        entry = cost_map.get(prefix + upstream)
        if not isinstance(entry, Mapping):
            continue
        inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if not isinstance(inp, int | float) or not isinstance(out, int | float):
            continue
        cached = entry.get("cache_read_input_token_cost")
        return Price(
            per_token_to_micros_per_mtok(float(inp)),
            per_token_to_micros_per_mtok(float(out)),
            per_token_to_micros_per_mtok(float(cached)) if isinstance(cached, int | float) else None,
            "litellm",
        )
    return None


def cost_micros(input_tokens: int, output_tokens: int, price: Price) -> int:
    """The team's one cost rule for callers holding plain token counts."""
    return -(-(input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) // MICROS)
