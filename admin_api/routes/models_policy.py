"""Model policy of a unit: which models it may use (within its parent's) and its default model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from admin_api.context import Ctx, reader, row_label, snapshot, writer
from admin_api.ids import MODEL_ID, UnitId
from admin_api.policy import catalogue, effective_all, policy_problems, require_consistent

router = APIRouter(tags=["model policy"])

ModelName = Annotated[str, Field(pattern=MODEL_ID)]


class PolicyOut(BaseModel):
    unit_id: str
    models: list[str] | None  # own list; None: every model the parent allows
    default_model: str | None
    effective_models: list[str]
    parent_models: list[str]  # what the parent allows (the catalog, for the root)


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelName] | None = Field(
        default=None, max_length=500, description="null: inherit the parent's models"
    )
    default_model: str | None = Field(default=None, pattern=MODEL_ID)

    def cleaned(self) -> list[str] | None:
        return list(dict.fromkeys(self.models)) if self.models is not None else None


async def _policy(ctx: Ctx, unit_id: str) -> PolicyOut:
    tree = ctx.access.tree
    catalog = await catalogue(ctx.session, ctx.institution_id)
    effective = effective_all(tree, catalog)
    unit = tree.units[unit_id]
    parent = effective[unit.parent_id] if unit.parent_id is not None else catalog
    return PolicyOut(unit_id=unit_id, models=unit.models, default_model=unit.default_model,
                     effective_models=list(effective[unit_id]), parent_models=list(parent))  # fmt: skip


@router.get("/units/{unit_id}/models", response_model=PolicyOut, summary="A unit's model policy")
async def get_policy(unit_id: UnitId, ctx: Ctx = Depends(reader("org:read"))) -> PolicyOut:
    ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_unit(unit_id), "you have no role in this unit", unit_id)
    return await _policy(ctx, unit_id)


@router.put(
    "/units/{unit_id}/models", response_model=PolicyOut, summary="Set a unit's models and default model"
)
async def put_policy(unit_id: UnitId, body: PolicyIn, ctx: Ctx = Depends(writer("org:write"))) -> PolicyOut:
    unit = ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_edit_rules(unit_id), "only an admin above this unit sets its models", unit_id
    )
    catalog = await catalogue(ctx.session, ctx.institution_id)
    problems_before = policy_problems(ctx.access.tree, catalog)
    before = snapshot(unit)
    unit.models = body.cleaned()
    unit.default_model = body.default_model
    require_consistent(ctx.access.tree, catalog, problems_before)
    after = snapshot(unit)
    if after != before:
        ctx.audit("models.update", row_label(unit), before, after)
    await ctx.commit()
    return await _policy(ctx, unit_id)
