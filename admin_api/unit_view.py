"""A unit as the API shows it: its own settings, effective model list, caps, spend and warnings."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from admin_api.budget_view import BudgetNumbers, BudgetWarning, UnitBudgetView, numbers_for
from admin_api.budgets import BudgetIn, budget_of
from admin_api.policy import catalogue, effective_all
from admin_api.tree import UnitTree
from core.models import BudgetRule
from quota import QuotaEngine


class UnitOut(BaseModel):
    id: str
    parent_id: str | None
    kind: str
    name: str | None
    archived: bool
    position: int
    models: list[str] | None  # the unit's own list; None: every model the parent allows
    default_model: str | None
    effective_models: list[str]
    budget: BudgetIn
    numbers: UnitBudgetView
    warnings: list[BudgetWarning]


class TreeNode(UnitOut):
    children: list[TreeNode]


@dataclass
class UnitRenderer:
    tree: UnitTree
    rules: dict[str, list[BudgetRule]]
    numbers: BudgetNumbers
    effective: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        # Once per request, not per unit: a 2,000-unit tree renders every unit.
        self.archived: set[str] = {u.id for u in self.tree.units.values() if u.archived}

    def one(self, unit_id: str) -> UnitOut:
        u = self.tree.units[unit_id]
        return UnitOut(
            id=u.id, parent_id=u.parent_id, kind=u.kind, name=u.name, archived=u.archived, position=u.position,
            models=list(u.models) if u.models is not None else None, default_model=u.default_model,
            effective_models=list(self.effective.get(u.id, ())), budget=budget_of(u, self.rules.get(u.id, [])),
            numbers=self.numbers.view(u.id), warnings=self.numbers.warnings([u.id], self.archived),
        )  # fmt: skip

    def nested(self, unit_id: str, include_archived: bool) -> TreeNode:
        kids = [k for k in self.tree.kids(unit_id) if include_archived or not self.tree.units[k].archived]
        return TreeNode(
            **self.one(unit_id).model_dump(), children=[self.nested(k, include_archived) for k in kids]
        )


async def renderer(
    session: AsyncSession, tree: UnitTree, institution_id: str, quota: QuotaEngine | None
) -> UnitRenderer:
    rows = await session.execute(select(BudgetRule).where(BudgetRule.institution_id == institution_id))
    rules: dict[str, list[BudgetRule]] = defaultdict(list)
    for r in rows.scalars():
        rules[r.unit_id].append(r)
    numbers = await numbers_for(session, institution_id, quota)
    return UnitRenderer(tree, rules, numbers, effective_all(tree, await catalogue(session, institution_id)))
