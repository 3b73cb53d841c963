"""A unit's budget as the API reads and writes it, and its translation to `BudgetRule` rows.

Amounts are integers, as everywhere in EduAiQ: `cost` in micro-units of the
institution's currency (1 USD = 1_000_000), `tokens` in tokens. A percent is
a decimal 0..100 of the parent's cap; a fair share is a factor of the unit's
cap divided by its member count (spec section 3).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from core.models import BudgetRule, Unit
from quota.waterfall import MAX_EXACT

Metric = Literal["cost", "tokens"]
METRICS: tuple[Metric, ...] = ("cost", "tokens")
Period = Literal["day", "week", "month", "semester", "year", "none"]
Amount = Field(default=None, ge=0, le=MAX_EXACT, description="micro-units for cost, tokens for tokens")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleIn(Strict):
    """One metric's allocation: `fixed` (amount), `percent` (of the parent's cap) or `inherit`."""

    mode: Literal["fixed", "percent", "inherit"] = "inherit"
    amount: int | None = Amount
    percent: Decimal | None = Field(default=None, ge=0, le=100, max_digits=9, decimal_places=6)

    @model_validator(mode="after")
    def _shape(self) -> RuleIn:
        if self.mode == "fixed" and (self.amount is None or self.percent is not None):
            raise ValueError("mode fixed takes amount (and no percent)")
        if self.mode == "percent" and (self.percent is None or self.amount is not None):
            raise ValueError("mode percent takes percent (and no amount)")
        if self.mode == "inherit" and (self.amount is not None or self.percent is not None):
            raise ValueError("mode inherit takes neither amount nor percent")
        return self


class MemberCapIn(Strict):
    """Each member's own limit in the unit: `fixed` (amount), `fair_share` (factor) or `none`."""

    mode: Literal["fixed", "fair_share", "none"] = "none"
    amount: int | None = Amount
    factor: Decimal | None = Field(default=None, gt=0, le=1000, max_digits=12, decimal_places=6)

    @model_validator(mode="after")
    def _shape(self) -> MemberCapIn:
        if self.mode == "fixed" and (self.amount is None or self.factor is not None):
            raise ValueError("mode fixed takes amount (and no factor)")
        if self.mode == "fair_share" and (self.factor is None or self.amount is not None):
            raise ValueError("mode fair_share takes factor (and no amount)")
        if self.mode == "none" and (self.amount is not None or self.factor is not None):
            raise ValueError("mode none takes neither amount nor factor")
        return self


class MemberCapsIn(Strict):
    cost: MemberCapIn = MemberCapIn()
    tokens: MemberCapIn = MemberCapIn()


class BudgetIn(Strict):
    """The whole budget of a unit (PUT replaces it). `period: null` uses the parent's period."""

    period: Period | None = None
    cost: RuleIn = RuleIn()
    tokens: RuleIn = RuleIn()
    member_cap: MemberCapsIn = MemberCapsIn()


def _plain(value: Decimal | None) -> Decimal:
    """40, not 4E+1 or 40.000000: how a person writes a percent."""
    d = Decimal(value or 0).normalize()
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d


async def unit_rules(session: AsyncSession, institution_id: str, unit_id: str) -> list[BudgetRule]:
    stmt = select(BudgetRule).where(
        BudgetRule.institution_id == institution_id, BudgetRule.unit_id == unit_id
    )
    return list((await session.execute(stmt)).scalars().all())


def budget_of(unit: Unit, rules: list[BudgetRule]) -> BudgetIn:
    """The stored budget in the shape it is written (so a GET can be edited and PUT back)."""
    out = BudgetIn(period=unit.period)
    for r in rules:
        metric: Metric = "cost" if r.metric == "cost" else "tokens"
        if r.scope == "unit":
            rule = (
                RuleIn(mode="fixed", amount=r.amount or 0)
                if r.mode == "fixed"
                else RuleIn(mode="percent", percent=_plain(r.ratio))
            )
            setattr(out, metric, rule)
        else:
            cap = (
                MemberCapIn(mode="fixed", amount=r.amount or 0)
                if r.mode == "fixed"
                else MemberCapIn(mode="fair_share", factor=_plain(r.ratio))
            )
            setattr(out.member_cap, metric, cap)
    return out


def budget_doc(unit_id: str, budget: BudgetIn) -> dict[str, object]:
    """The budget as it goes into the audit log (unit_id lets the log be filtered by scope)."""
    return {"unit_id": unit_id, **budget.model_dump(mode="json")}


def rows_for(institution_id: str, unit_id: str, budget: BudgetIn) -> list[BudgetRule]:
    rows: list[BudgetRule] = []
    for metric in METRICS:
        rule: RuleIn = getattr(budget, metric)
        if rule.mode == "fixed":
            rows.append(BudgetRule(institution_id=institution_id, unit_id=unit_id, metric=metric, scope="unit",
                                   mode="fixed", amount=rule.amount))  # fmt: skip
        elif rule.mode == "percent":
            rows.append(BudgetRule(institution_id=institution_id, unit_id=unit_id, metric=metric, scope="unit",
                                   mode="percent", ratio=rule.percent))  # fmt: skip
        cap: MemberCapIn = getattr(budget.member_cap, metric)
        if cap.mode == "fixed":
            rows.append(BudgetRule(institution_id=institution_id, unit_id=unit_id, metric=metric, scope="member",
                                   mode="fixed", amount=cap.amount))  # fmt: skip
        elif cap.mode == "fair_share":
            rows.append(BudgetRule(institution_id=institution_id, unit_id=unit_id, metric=metric, scope="member",
                                   mode="fair_share", ratio=cap.factor))  # fmt: skip
    return rows


async def write_budget(session: AsyncSession, unit: Unit, budget: BudgetIn) -> None:
    """Replace the unit's rules and period in the session (flushed, not committed)."""
    for old in await unit_rules(session, unit.institution_id, unit.id):
        await session.delete(old)
    await session.flush()
    unit.period = budget.period
    session.add_all(rows_for(unit.institution_id, unit.id, budget))
    await session.flush()
