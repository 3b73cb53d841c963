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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.models import BudgetRule, Extra, Institution, Membership, ModelOffer, Provider, Unit
from core.money import to_micro
from providers.config import ContractConfig, LimitsConfig
from quota.keys import contract_node, limit_member, limit_model, limit_provider, limit_unit
from quota.model import (
    ContractSpec,
    ExtraSpec,
    InstitutionSpec,
    LimitSpec,
    MemberCap,
    Metric,
    Rule,
    Semester,
    UnitSpec,
    validate,
)
from quota.periods import Calendar, local_midnight, window
from quota.results import Charge


def spec_from_rows(
    inst: Institution,
    units: list[Unit],
    rules: list[BudgetRule],
    extras: list[Extra],
    member_counts: dict[str, int],
    providers: Sequence[Provider] = (),
    offers: Sequence[ModelOffer] = (),
) -> InstitutionSpec:
    """``providers`` and ``offers`` carry the limits and contract ceilings of the catalog (in their
    ``options``); callers that pass none get a spec with no provider limits or contracts."""
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
    limits, contracts = limits_from_rows(units, providers, offers)
    spec = InstitutionSpec(
        id=inst.id,
        units=specs,
        timezone=inst.timezone,
        semesters=semesters,
        name=inst.name,
        limits=limits,
        contracts=contracts,
    )
    validate(spec)
    return spec


def _limit_spec(doc: Mapping[str, Any] | None) -> LimitSpec | None:
    if not doc:
        return None
    cfg = LimitsConfig.model_validate(doc)
    return LimitSpec(rpm=cfg.requests_per_minute, tpm=cfg.tokens_per_minute, concurrent=cfg.concurrent)


def _contract_spec(doc: Mapping[str, Any] | None) -> ContractSpec | None:
    if not doc:
        return None
    cfg = ContractConfig.model_validate(doc)
    return ContractSpec(cost=to_micro(cfg.cost), period=cfg.period)


def limits_from_rows(
    units: Sequence[Unit], providers: Sequence[Provider], offers: Sequence[ModelOffer]
) -> tuple[dict[str, LimitSpec], dict[str, ContractSpec]]:
    """Limit nodes (``u:``/``m:`` of units, ``p:``/``pm:`` of the catalog) and contract nodes (``c:``), read
    from ``Unit.limits`` and the provider/model ``options`` as the institution file wrote them. Archived
    units keep no limits: nothing is served under them."""
    limits: dict[str, LimitSpec] = {}
    contracts: dict[str, ContractSpec] = {}
    for u in units:
        if u.archived or not u.limits:
            continue
        for name, node in (("limits", limit_unit(u.id)), ("member_limits", limit_member(u.id))):
            spec = _limit_spec(u.limits.get(name))
            if spec is not None:
                limits[node] = spec
    for p in providers:
        if (spec := _limit_spec(p.options.get("limits"))) is not None:
            limits[limit_provider(p.id)] = spec
        if (con := _contract_spec(p.options.get("contract"))) is not None:
            contracts[contract_node(p.id)] = con
    for o in offers:
        if (spec := _limit_spec(o.options.get("limits"))) is not None:
            limits[limit_model(o.provider_id, o.id)] = spec
        if (con := _contract_spec(o.options.get("contract"))) is not None:
            contracts[contract_node(o.provider_id, o.id)] = con
    return limits, contracts


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
        providers=await rows(Provider),
        offers=await rows(ModelOffer),
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
        contracts=tuple((str(n), str(k), int(a)) for n, k, a in doc.get("contracts", [])),
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
    for contract in spec.contracts.values():  # a yearly contract makes a rebuild read the year's rows
        w = window(contract.period, now, cal)
        open_periods.add(w.key)
        if w.start is not None:
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
