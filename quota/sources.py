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

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.models import BudgetRule, Extra, Institution, Membership, Unit
from quota.model import ExtraSpec, InstitutionSpec, MemberCap, Metric, Rule, Semester, UnitSpec, validate
from quota.periods import Calendar, window
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


def earliest_open_window(spec: InstitutionSpec, now: datetime) -> datetime | None:
    """The oldest start among the periods now running: ledger rows before it cannot count. None: all time."""
    cal = Calendar(spec.timezone, spec.semesters, spec.year_start_month)
    starts: list[datetime] = []
    for unit in spec.units:
        start = window(spec.effective_period(unit.id), now, cal).start
        if start is None:  # a one-off allowance: its counters hold everything ever charged
            return None
        starts.append(start)
    return min(starts) if starts else now


def make_loader(
    engine: AsyncEngine, before_read: Callable[[], Awaitable[object]] | None = None
) -> Callable[[str], Awaitable[tuple[InstitutionSpec, Iterable[Charge]]]]:
    async def load(institution: str) -> tuple[InstitutionSpec, Iterable[Charge]]:
        if before_read is not None:
            await before_read()
        async with AsyncSession(engine) as session:
            spec = await load_spec(session, institution)
            charges = await load_charges(session, spec)
        return spec, charges

    return load


async def load_charges(session: AsyncSession, spec: InstitutionSpec) -> list[Charge]:
    """Every charge that can still count: those since the oldest period now running."""
    since = earliest_open_window(spec, datetime.now(UTC))
    query = "select funding from usage_event where institution_id = :i and funding::text <> '{}'"
    params: dict[str, Any] = {"i": spec.id}
    if since is not None:
        query += " and ended_at >= :since"
        params["since"] = since
    rows = (await session.execute(text(query), params)).scalars().all()
    return [charge_from_json(r) for r in rows]
