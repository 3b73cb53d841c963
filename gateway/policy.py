"""Stage 2: may this unit use this model? Answered from the catalog in memory."""

from __future__ import annotations

from gateway.catalog import InstitutionView
from gateway.errors import ApiError
from providers.policy import check_model


def resolve_model(view: InstitutionView, unit_id: str, requested: str | None) -> tuple[str, tuple[str, ...]]:
    """The model to route to and the unit's allowed list (which also bounds cross-model fallbacks)."""
    unit = view.units[unit_id]
    decision = check_model(unit.models, unit.default_model, requested)
    if decision.allowed and decision.model is not None:
        return decision.model, decision.allowed_models
    if requested and requested not in view.router.model_ids():
        listing = ", ".join(unit.models) or "none"
        raise ApiError(404, f"The model '{requested}' does not exist. Models you can use: {listing}.",
                       param="model", code="model_not_found")  # fmt: skip
    raise ApiError(403, f"{decision.reason} (unit {unit.name}).", param="model", code="model_not_allowed")
