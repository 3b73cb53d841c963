"""What the budget engine reads from PostgreSQL: specs from the institution's rows, charges from the ledger.

The engine works on plain `InstitutionSpec`s and `Charge`s; this is the one
place that reads them from PostgreSQL, used by the gateway's catalog, the
admin API after an edit, and `eduaiq quota rebuild/check`.

When Redis has lost its counters they are rebuilt from the ledger: every
settled request's `funding` (its `Charge`, stored as-is in the usage event)
replays into exactly the counters it once changed. The caller passes
`before_read` to make sure recent requests have reached the ledger first.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.models import BudgetRule, Extra, Institution, Membership, Unit
from quota.model import ExtraSpec, InstitutionSpec, MemberCap, Metric, Rule, Semester, UnitSpec, validate
from quota.periods import Calendar, local_midnight, window
from quota.results import Charge


def spec_from_rows(
    inst: Institution,
    units: list[Unit],
    rules: list[BudgetRule],
    extras: list[Extra],
    member_counts: dict[str, int],
) -> InstitutionSpec:
    unit_rules: dict[str, dict[Metric, Rule]] = defaultdict(dict)
    caps: dict[str, dict[Metric, MemberCap]] = defaultdict(dict)
    for r in rules:
        metric: Metric = "cost" if r.metric == "cost" else "tokens"
        if r.scope == "unit":
            unit_rules[r.unit_id][metric] = (
                Rule.fixed(r.amount or 0) if r.mode == "fixed" else Rule.percent(r.ratio or 0)
            )
        else:
            caps[r.unit_id][metric] = (
                MemberCap.fixed(r.amount or 0) if r.mode == "fixed" else MemberCap.fair_share(r.ratio or 0)
            )
    unit_extras: dict[str, list[ExtraSpec]] = defaultdict(list)
    for x in sorted(extras, key=lambda x: x.id):
        amounts: dict[Metric, int] = {"cost" if x.metric == "cost" else "tokens": x.amount}
        unit_extras[x.unit_id].append(ExtraSpec(x.id, amounts, x.valid_from, x.valid_to, x.chargeback))
    specs = tuple(
        UnitSpec(
            id=u.id,
            parent=u.parent_id,
            kind=u.kind,
            name=u.name or u.id,
            period=u.period,  # type: ignore[arg-type]
            rules=unit_rules[u.id],
            member_cap=caps[u.id],
            extras=tuple(unit_extras[u.id]),
            member_count=member_counts.get(u.id, 0),
        )
        for u in units
    )
    semesters = tuple(
        Semester(str(s["id"]), date.fromisoformat(str(s["start"])), date.fromisoformat(str(s["end"])))
        for s in inst.semesters
    )
    spec = InstitutionSpec(
        id=inst.id, units=specs, timezone=inst.timezone, semesters=semesters, name=inst.name
    )
    validate(spec)
    return spec


async def load_spec(session: AsyncSession, inst_id: str) -> InstitutionSpec:
    inst = await session.get(Institution, inst_id)
    if inst is None:
        raise LookupError(f"no institution {inst_id!r}")

    async def rows(table: Any) -> list[Any]:
        stmt = select(table).where(table.institution_id == inst_id)
        return list((await session.execute(stmt)).scalars().all())

    return spec_from_rows(
        inst,
        await rows(Unit),
        await rows(BudgetRule),
        await rows(Extra),
        await member_counts(session, inst_id),
    )


async def member_counts(session: AsyncSession, inst_id: str) -> dict[str, int]:
    """Members per unit (the fair-share divisor), counted by PostgreSQL: an institution has tens of
    thousands of memberships and none of them is needed as an object here."""
    stmt = (
        select(Membership.unit_id, func.count())  # type: ignore[call-overload]
        .where(Membership.institution_id == inst_id)
        .group_by(Membership.unit_id)
    )
    return {unit: int(n) for unit, n in (await session.execute(stmt)).all()}


def charge_from_json(doc: dict[str, Any]) -> Charge:
    return Charge(
        institution=str(doc["institution"]),
        path=tuple(doc["path"]),
        period_keys=tuple(doc["period_keys"]),
        allocation={k: int(v) for k, v in doc["allocation"].items()},
        extras={k: tuple((str(x[0]), int(x[1]), int(x[2])) for x in v) for k, v in doc["extras"].items()},
    )


@dataclass(frozen=True)
class LedgerScope:
    """What a rebuild must read from the ledger at one instant, and which counters that read covers.

    Period counters (``up``) can only matter while their window is open, so rows since the oldest window
    now running (``since``) rebuild them. A grant (extra) is different: its ``used`` is one counter over
    its whole validity, which may span several periods (a November-December grant that paid 30 in
    November has 30 less in December), so rows since the first day of the earliest grant still valid
    (``extras_since``) are read for the grants they paid. Counters outside the scope (closed periods,
    expired grants) cannot admit anything any more: ``quota check`` leaves them out rather than report
    as drift what the read did not cover.
    """

    since: datetime | None  # None: all time (a one-off allowance's counters hold everything)
    extras_since: datetime | None  # None: no grant is still valid
    open_periods: frozenset[str]  # period keys of the windows running now
    live_extras: frozenset[str]  # grants valid now or later

    def read_from(self) -> datetime | None:
        if self.since is None or self.extras_since is None:
            return self.since
        return min(self.since, self.extras_since)

    def covers_unit(self, period_key: str) -> bool:
        return period_key in self.open_periods

    def covers_extra(self, extra_id: str) -> bool:
        return extra_id in self.live_extras


def ledger_scope(spec: InstitutionSpec, now: datetime) -> LedgerScope:
    cal = Calendar(spec.timezone, spec.semesters, spec.year_start_month)
    starts: list[datetime] = []
    open_periods: set[str] = set()
    unbounded = False
    for unit in spec.units:
        w = window(spec.effective_period(unit.id), now, cal)
        open_periods.add(w.key)
        if w.start is None:  # a one-off allowance: its counters hold everything ever charged
            unbounded = True
        else:
            starts.append(w.start)
    today = now.astimezone(cal.tz).date()
    live = [x for u in spec.units for x in u.extras if x.valid_to >= today]
    extras_since = min((local_midnight(x.valid_from, cal) for x in live), default=None)
    return LedgerScope(
        since=None if unbounded else min(starts, default=now),
        extras_since=extras_since,
        open_periods=frozenset(open_periods),
        live_extras=frozenset(x.id for x in live),
    )


def make_loader(
    engine: AsyncEngine,
    before_read: Callable[[], Awaitable[object]] | None = None,
    clock: Callable[[], float] = time.time,
) -> Callable[[str], Awaitable[tuple[InstitutionSpec, Iterable[Charge]]]]:
    """``before_read`` must make sure the ledger holds every settled request, or raise (the rebuild is
    then refused: counters rebuilt from a ledger that lags would fund the missing requests twice)."""

    async def load(institution: str) -> tuple[InstitutionSpec, Iterable[Charge]]:
        if before_read is not None:
            await before_read()
        async with AsyncSession(engine) as session:
            spec = await load_spec(session, institution)
            charges = await load_charges(session, spec, datetime.fromtimestamp(clock(), UTC))
        return spec, charges

    return load


async def load_charges(
    session: AsyncSession, spec: InstitutionSpec, now: datetime | None = None
) -> list[Charge]:
    """Every charge that can still count at ``now`` (see :class:`LedgerScope`): whole charges since the oldest
    period now running, and before that only what grants still valid paid."""
    scope = ledger_scope(spec, now or datetime.now(UTC))
    query = "select funding, ended_at from usage_event where institution_id = :i and funding::text <> '{}'"
    params: dict[str, Any] = {"i": spec.id}
    start = scope.read_from()
    if start is not None:
        query += " and ended_at >= :since"
        params["since"] = start
    out = []
    for funding, ended_at in (await session.execute(text(query), params)).all():
        charge = charge_from_json(funding)
        if scope.since is not None and _aware(ended_at) < scope.since:
            # Its periods are all closed: keep only what it took from grants (no path, no period counter).
            charge = Charge(charge.institution, (), (), {}, charge.extras)
        out.append(charge)
    return out


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
