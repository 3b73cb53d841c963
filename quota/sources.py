"""Budget specs from the database rows the institution file and the admin API write.

The engine works on plain `InstitutionSpec`s; this is the one place that reads
them from PostgreSQL, used by the gateway's catalog, the admin API after an
edit, and `eduaiq quota rebuild`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import BudgetRule, Extra, Institution, Membership, Unit
from quota.model import ExtraSpec, InstitutionSpec, MemberCap, Metric, Rule, Semester, UnitSpec, validate


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

    members = await rows(Membership)
    return spec_from_rows(
        inst,
        await rows(Unit),
        await rows(BudgetRule),
        await rows(Extra),
        dict(Counter(m.unit_id for m in members)),
    )
