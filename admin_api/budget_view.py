"""Caps, spend and warnings per unit: what the dashboard's tree and live preview show.

Caps come from quota's own resolver over the database rules (so the preview of
an unsaved edit and the saved tree use the same arithmetic as the gateway);
spend and holds come from quota's counters in Redis for each unit's current
period. Warnings are advice, never refusals (spec section 3: children may be
over-allocated, the parent's cap still binds):

* `over_allocated`: a unit's children's fixed and percent shares add up to
  more than its own cap;
* `cap_below_spend`: a unit's cap is below what it has already spent this
  period (it can spend nothing more until the period resets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.errors import invalid
from core.time import utcnow
from quota import QuotaEngine
from quota.caps import Caps, resolve_caps, resolve_member_caps
from quota.model import METRICS, InstitutionSpec, Metric, SpecError, UnitSpec
from quota.periods import Calendar, window
from quota.sources import load_spec


class BudgetWarning(BaseModel):
    code: str
    unit: str
    metric: Metric
    message: str
    cap: int
    amount: int


class ExtraView(BaseModel):
    id: str
    metric: Metric
    amount: int
    used: int | None
    valid_from: date
    valid_to: date
    chargeback: str | None
    valid_now: bool


class MetricView(BaseModel):
    cap: int | None  # None: inherits (no cap of its own)
    member_cap: int | None
    used: int | None  # None when quota has not compiled this institution yet
    reserved: int | None
    room: int | None


class UnitBudgetView(BaseModel):
    period: str
    period_key: str
    resets_at: datetime | None
    metrics: dict[str, MetricView]
    extras: list[ExtraView]


@dataclass
class Live:
    """Counters as quota holds them; `compiled` False when Redis has no budget for the institution."""

    compiled: bool
    up: dict[tuple[str, str, Metric], int] = field(default_factory=dict)
    res: dict[tuple[str, str, Metric], int] = field(default_factory=dict)
    extras_used: dict[tuple[str, Metric], int] = field(default_factory=dict)


async def read_live(quota: QuotaEngine, institution_id: str) -> Live:
    if not await quota.is_compiled(institution_id):
        return Live(False)
    up, res, used = await quota.redis_counters(institution_id)
    return Live(True, up, res, used)


def calendar_of(spec: InstitutionSpec) -> Calendar:
    return Calendar(timezone=spec.timezone, semesters=spec.semesters, year_start_month=spec.year_start_month)


@dataclass
class BudgetNumbers:
    """Every unit's resolved caps with this moment's counters, computed once per request."""

    spec: InstitutionSpec
    live: Live
    at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        self.caps: Caps = resolve_caps(self.spec)
        self.member_caps: Caps = resolve_member_caps(self.spec, self.caps)
        self.units = self.spec.by_id()
        self.kids = self.spec.children()
        self.calendar = calendar_of(self.spec)
        # A unit's period is looked up for every unit and metric; resolve each once.
        self.periods = {uid: self.spec.effective_period(uid) for uid in self.units}

    def used(self, unit_id: str, metric: Metric) -> tuple[int | None, int | None]:
        if not self.live.compiled:
            return None, None
        key = window(self.periods[unit_id], self.at, self.calendar).key
        return self.live.up.get((key, unit_id, metric), 0), self.live.res.get((key, unit_id, metric), 0)

    def view(self, unit_id: str) -> UnitBudgetView:
        unit = self.units[unit_id]
        period = self.periods[unit_id]
        win = window(period, self.at, self.calendar)
        metrics: dict[str, MetricView] = {}
        for m in METRICS:
            cap = self.caps[unit_id][m]
            used, reserved = self.used(unit_id, m)
            room = None if cap is None or used is None else max(0, cap - used - (reserved or 0))
            metrics[m] = MetricView(cap=cap, member_cap=self.member_caps[unit_id][m], used=used,
                                    reserved=reserved, room=room)  # fmt: skip
        extras = []
        today = self.at.astimezone(self.calendar.tz).date()
        for x in sorted(unit.extras, key=lambda x: (x.valid_to, x.id)):
            for m, amount in x.amounts.items():
                used_x = self.live.extras_used.get((x.id, m), 0) if self.live.compiled else None
                extras.append(ExtraView(id=x.id, metric=m, amount=amount, used=used_x, valid_from=x.valid_from,
                                        valid_to=x.valid_to, chargeback=x.chargeback,
                                        valid_now=x.valid_from <= today <= x.valid_to))  # fmt: skip
        return UnitBudgetView(
            period=period, period_key=win.key, resets_at=win.end, metrics=metrics, extras=extras
        )

    def warnings(self, unit_ids: list[str], archived: set[str]) -> list[BudgetWarning]:
        out: list[BudgetWarning] = []
        kids = self.kids
        for uid in unit_ids:
            for m in METRICS:
                cap = self.caps[uid][m]
                if cap is None:
                    continue
                shares = [
                    self.caps[k][m]
                    for k in kids.get(uid, [])
                    if k not in archived and _has_share(self.units[k], m)
                ]
                allocated = sum(s for s in shares if s is not None)
                if allocated > cap:
                    out.append(BudgetWarning(code="over_allocated", unit=uid, metric=m, cap=cap, amount=allocated,
                                        message=f"{uid}'s children are allocated {allocated} of {m}, "
                                                f"more than its cap of {cap}"))  # fmt: skip
                used, _ = self.used(uid, m)
                if used is not None and cap < used:
                    out.append(BudgetWarning(code="cap_below_spend", unit=uid, metric=m, cap=cap, amount=used,
                                        message=f"{uid}'s {m} cap {cap} is below what it already spent "
                                                f"this period ({used})"))  # fmt: skip
        return out


def _has_share(unit: UnitSpec, metric: Metric) -> bool:
    return unit.rule(metric).mode in ("fixed", "percent")


def caps_doc(numbers: BudgetNumbers, unit_id: str) -> dict[str, Any]:
    return {m: numbers.caps[unit_id][m] for m in METRICS}


async def numbers_for(session: AsyncSession, institution_id: str, quota: QuotaEngine | None) -> BudgetNumbers:
    """Caps from the rows as the session sees them (unsaved edits included); counters when `quota` is given.

    A tree quota could not honour (a percent with no finite cap above it) is the caller's mistake: 422.
    """
    try:
        spec = await load_spec(session, institution_id)
        live = await read_live(quota, institution_id) if quota is not None else Live(False)
        return BudgetNumbers(spec, live)
    except SpecError as exc:
        raise invalid(str(exc), [{"path": "budget", "message": str(exc)}], code="budget_invalid") from None
