"""A unit's budget: read it, preview an edit (nothing saved), save it.

Preview and save run the same code on the same rows; the preview then rolls
back. So what the dashboard shows while an admin types is exactly what saving
would produce, caps of every unit below included.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from admin_api.budget_view import BudgetNumbers, BudgetWarning, UnitBudgetView, numbers_for
from admin_api.budgets import BudgetIn, budget_doc, budget_of, unit_rules, write_budget
from admin_api.context import Ctx, reader, row_label, writer
from admin_api.errors import invalid
from admin_api.ids import UnitId
from core.models import Institution, Unit

router = APIRouter(tags=["budgets"])


class BudgetOut(BaseModel):
    unit_id: str
    budget: BudgetIn
    numbers: UnitBudgetView


class CapChange(BaseModel):
    unit_id: str
    name: str | None
    caps_before: dict[str, int | None]
    caps_after: dict[str, int | None]
    member_caps_after: dict[str, int | None]
    used: dict[str, int | None]


class BudgetEffect(BaseModel):
    """Every unit whose cap follows from the edited one, before and after, and the warnings after."""

    unit_id: str
    at: datetime
    saved: bool
    budget: BudgetIn
    units: list[CapChange]
    warnings: list[BudgetWarning]


def _effect(
    ctx: Ctx, unit_id: str, budget: BudgetIn, old: BudgetNumbers, new: BudgetNumbers, saved: bool
) -> BudgetEffect:
    tree = ctx.access.tree
    affected = [u for u in tree.subtree(unit_id) if not tree.units[u].archived]
    changes = []
    for uid in affected:
        used = {m: new.used(uid, m)[0] for m in ("cost", "tokens")}
        changes.append(CapChange(unit_id=uid, name=tree.units[uid].name, caps_before=dict(old.caps[uid]),
                                 caps_after=dict(new.caps[uid]), member_caps_after=dict(new.member_caps[uid]),
                                 used=used))  # fmt: skip
    parent = tree.units[unit_id].parent_id
    watched = ([parent] if parent is not None else []) + affected
    archived = {u.id for u in tree.units.values() if u.archived}
    return BudgetEffect(unit_id=unit_id, at=new.at, saved=saved, budget=budget, units=changes,
                        warnings=new.warnings(watched, archived))  # fmt: skip


async def _check_period(ctx: Ctx, budget: BudgetIn) -> None:
    if budget.period == "semester":
        inst = await ctx.session.get(Institution, ctx.institution_id)
        if inst is None or not inst.semesters:
            raise invalid("period 'semester' needs the institution's semesters",
                          [{"path": "period", "message": "the institution has no semesters"}])  # fmt: skip


async def _apply(ctx: Ctx, unit: Unit, budget: BudgetIn) -> tuple[BudgetNumbers, BudgetNumbers]:
    await _check_period(ctx, budget)
    old = await numbers_for(ctx.session, ctx.institution_id, ctx.state.quota)
    await write_budget(ctx.session, unit, budget)
    new = await numbers_for(ctx.session, ctx.institution_id, None)
    return old, BudgetNumbers(new.spec, old.live, old.at)


@router.get("/units/{unit_id}/budget", response_model=BudgetOut, summary="A unit's budget rules and numbers")
async def get_budget(unit_id: UnitId, ctx: Ctx = Depends(reader("org:read"))) -> BudgetOut:
    unit = ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_unit(unit_id), "you have no role in this unit", unit_id)
    numbers = await numbers_for(ctx.session, ctx.institution_id, ctx.state.quota)
    rules = await unit_rules(ctx.session, ctx.institution_id, unit_id)
    return BudgetOut(unit_id=unit_id, budget=budget_of(unit, rules), numbers=numbers.view(unit_id))


@router.post(
    "/units/{unit_id}/budget/preview",
    response_model=BudgetEffect,
    summary="What a budget edit would do, without saving it",
)
async def preview_budget(
    unit_id: UnitId, body: BudgetIn, ctx: Ctx = Depends(reader("org:read"))
) -> BudgetEffect:
    unit = ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_edit_rules(unit_id), "only an admin above this unit sets its budget", unit_id
    )
    try:
        old, new = await _apply(ctx, unit, body)
        return _effect(ctx, unit_id, body, old, new, saved=False)
    finally:
        await ctx.session.rollback()


@router.put("/units/{unit_id}/budget", response_model=BudgetEffect, summary="Replace a unit's budget")
async def put_budget(
    unit_id: UnitId, body: BudgetIn, ctx: Ctx = Depends(writer("org:write"))
) -> BudgetEffect:
    unit = ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_edit_rules(unit_id), "only an admin above this unit sets its budget", unit_id
    )
    before = budget_of(unit, await unit_rules(ctx.session, ctx.institution_id, unit_id))
    old, new = await _apply(ctx, unit, body)
    if before != body:
        ctx.audit("budget.update", row_label(unit), budget_doc(unit_id, before), budget_doc(unit_id, body))
    await ctx.commit()
    return _effect(ctx, unit_id, body, old, new, saved=True)
