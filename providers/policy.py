"""Which models a unit may use: a pure function, so the gateway can answer 403 without I/O."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelDecision:
    allowed: bool
    model: str | None
    """The model to route to (the default when the request named none); None when refused."""
    allowed_models: tuple[str, ...]
    reason: str | None = None


def effective_models(unit_models: Collection[str] | None, parent_models: Collection[str]) -> tuple[str, ...]:
    """A unit's own list narrows its parent's; absent (None) inherits it. Widening is ignored."""
    parent = tuple(parent_models)
    if unit_models is None:
        return parent
    own = set(unit_models)
    return tuple(m for m in parent if m in own)


def check_model(allowed: Collection[str], default_model: str | None, requested: str | None) -> ModelDecision:
    """allowed / not allowed for `requested` (or the default when the request names none).

    `allowed` is the unit's effective set (see `effective_models`), in a stable
    order so the 403 message lists models the same way each time.
    """
    allowed_t = tuple(allowed)
    model = requested or default_model
    if not model:
        return ModelDecision(False, None, allowed_t, "no model given and this unit has no default model")
    if model in allowed_t:
        return ModelDecision(True, model, allowed_t)
    listing = ", ".join(allowed_t) if allowed_t else "none"
    return ModelDecision(False, None, allowed_t, f"model '{model}' is not allowed here; allowed: {listing}")
