"""What the hot path knows about each institution, compiled from PostgreSQL once, not per request.

Per institution: its units (names, kinds, effective model lists), its budget
spec for `quota/`, and its model router. The admin API and `org import`
publish an institution id on the invalidation channel after a change; every
replica then reloads that institution and swaps the view in one assignment, so
a request sees either the old configuration or the new one, never a mix.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.models import BudgetRule, Extra, Institution, ModelOffer, Provider, Unit
from providers.build import build_router
from providers.config import ProviderConfig
from providers.http import UpstreamPool
from providers.policy import effective_models
from providers.router import Router
from providers.upstream_policy import UpstreamPolicy
from quota.model import InstitutionSpec
from quota.sources import member_counts, spec_from_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UnitInfo:
    id: str
    parent: str | None
    kind: str
    name: str
    models: tuple[str, ...]
    default_model: str | None


@dataclass(frozen=True, slots=True)
class FairShare:
    """The institution file's `fair_share:` section: weights of units (by id or kind) in the fair queues of
    self-hosted models, and whole-day windows (e.g. exam weeks) that override some of them."""

    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    windows: tuple[tuple[date, date, Mapping[str, float]], ...] = ()

    @classmethod
    def parse(cls, doc: Mapping[str, Any] | None) -> FairShare:
        """From the stored section (the file's field names; numbers may be strings)."""
        if not doc:
            return cls()
        windows = tuple(
            (date.fromisoformat(str(w["from"])), date.fromisoformat(str(w["to"])),
             {k: float(v) for k, v in (w.get("weights") or {}).items()})
            for w in doc.get("windows") or ()
        )  # fmt: skip
        return cls({k: float(v) for k, v in (doc.get("weights") or {}).items()},
                   float(doc.get("default_weight", 1)), windows)  # fmt: skip

    def window(self, day: date) -> int:
        """Index of the window holding `day` (windows do not overlap), or -1."""
        for i, (start, end, _) in enumerate(self.windows):
            if start <= day <= end:
                return i
        return -1


@dataclass(slots=True)
class InstitutionView:
    id: str
    name: str
    currency: str
    timezone: str
    units: dict[str, UnitInfo]
    spec: InstitutionSpec
    router: Router
    chargebacks: dict[str, str | None]  # extra id -> grant or cost centre, for the usage event
    fair_share: FairShare = field(default_factory=FairShare)
    _lineage: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    _flows: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)

    @property
    def limited(self) -> bool:
        """Whether any limit or contract is configured: without one, no request does any limit work."""
        return bool(self.spec.limits or self.spec.contracts)

    def limit_scopes(self, model: str, allowed: Any = None) -> tuple[tuple[str, str], ...]:
        """The (provider, model) pairs whose limits and contracts a request for `model` holds: every one it
        may be served by. Empty when the institution has no limits (the engine then does no limit work)."""
        if not self.limited:
            return ()
        return self.router.chain_pairs(model, allowed)

    def flow_of(self, unit_id: str, day: date) -> tuple[str, float]:
        """(flow, weight) of a request from `unit_id` in a fair queue on local `day`: the nearest unit on the
        path whose id (else kind) has a weight that day; else flow "*" with the default weight."""
        fair = self.fair_share
        window = fair.window(day) if fair.windows else -1
        known = self._flows.get((unit_id, window))
        if known is not None:
            return known
        weights = dict(fair.weights)
        if window >= 0:
            weights.update(fair.windows[window][2])
        known = ("*", fair.default_weight)
        for unit in self.path(unit_id):
            weight = weights.get(unit.id, weights.get(unit.kind))
            if weight is not None:
                known = (unit.id, weight)
                break
        self._flows[(unit_id, window)] = known
        return known

    def lineage(self, unit_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(ids, kinds) of the unit and its ancestors, nearest first: what every usage event carries,
        worked out once per unit for the life of this view rather than on every request."""
        known = self._lineage.get(unit_id)
        if known is None:
            path = self.path(unit_id)
            known = self._lineage[unit_id] = (tuple(u.id for u in path), tuple(u.kind for u in path))
        return known

    def path(self, unit_id: str) -> list[UnitInfo]:
        """The unit and its ancestors, nearest first (the member node is quota's business)."""
        out = []
        current: str | None = unit_id
        while current is not None:
            unit = self.units[current]
            out.append(unit)
            current = unit.parent
        return out


async def _rows(session: AsyncSession, table: Any, inst_id: str) -> list[Any]:
    stmt = select(table).where(table.institution_id == inst_id)
    return list((await session.execute(stmt)).scalars().all())


def _unit_infos(units: list[Unit], catalogue: tuple[str, ...]) -> dict[str, UnitInfo]:
    by_parent: dict[str | None, list[Unit]] = defaultdict(list)
    for u in units:
        by_parent[u.parent_id].append(u)
    out: dict[str, UnitInfo] = {}
    stack: list[tuple[Unit, tuple[str, ...]]] = [(u, catalogue) for u in by_parent[None]]
    while stack:
        unit, parent_models = stack.pop()
        models = effective_models(unit.models, parent_models)
        out[unit.id] = UnitInfo(
            unit.id, unit.parent_id, unit.kind, unit.name or unit.id, models, unit.default_model
        )
        stack.extend((child, models) for child in by_parent[unit.id])
    return out


def _loadable(inst_id: str, docs: list[tuple[str, dict[str, Any]]]) -> list[ProviderConfig]:
    """The stored providers that still pass the checks. A row written before a check existed (a header
    value, a timeout, a URL the current release refuses) is left out with one log line, not allowed to stop
    the gateway: refusing it at load crash-looped every gateway of every institution after an upgrade.
    The institution's other providers keep serving; the admin fixes the row by importing the file again."""
    out: list[ProviderConfig] = []
    for provider_id, doc in docs:
        try:
            out.append(ProviderConfig.model_validate(doc))
        except ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            log.error("institution %s: provider %s not loaded, its stored settings fail the checks: %s",
                      inst_id, provider_id, reasons[:1000])  # fmt: skip
    return out


async def load_institution(
    session: AsyncSession, inst_id: str, http: UpstreamPool | None, policy: UpstreamPolicy | None = None
) -> InstitutionView | None:
    inst = await session.get(Institution, inst_id)
    if inst is None:
        return None
    units = await _rows(session, Unit, inst_id)
    providers = sorted(await _rows(session, Provider, inst_id), key=lambda p: p.position)
    offers: dict[str, list[ModelOffer]] = defaultdict(list)
    for o in sorted(await _rows(session, ModelOffer, inst_id), key=lambda o: o.position):
        offers[o.provider_id].append(o)
    configs = _loadable(inst_id, [(p.id, p.to_config(offers[p.id], default_prices=True)) for p in providers])
    catalogue = tuple(dict.fromkeys(o.id for p in providers for o in offers[p.id]))
    spec = spec_from_rows(
        inst,
        units,
        await _rows(session, BudgetRule, inst_id),
        await _rows(session, Extra, inst_id),
        await member_counts(session, inst_id),
        providers=providers,
        offers=[o for p in providers for o in offers[p.id]],
    )
    router = build_router(
        configs, currency=inst.currency, session=http, policy=policy and policy.for_institution(inst_id)
    )
    chargebacks = {x.id: x.chargeback for u in spec.units for x in u.extras}
    return InstitutionView(
        inst.id,
        inst.name,
        inst.currency,
        inst.timezone,
        _unit_infos(units, catalogue),
        spec,
        router,
        chargebacks,
        FairShare.parse(getattr(inst, "fair_share", None)),
    )


class Catalog:
    """All institutions of this deployment, each replaceable on its own."""

    def __init__(
        self, engine: AsyncEngine, http: UpstreamPool | None, policy: UpstreamPolicy | None = None
    ) -> None:
        self._engine = engine
        self._http = http
        self._policy = policy
        self.views: dict[str, InstitutionView] = {}

    async def load_all(self) -> None:
        async with AsyncSession(self._engine) as session:
            ids = (await session.execute(select(Institution))).scalars().all()
        for inst in ids:
            await self.reload(inst.id)

    async def reload(self, inst_id: str) -> InstitutionView | None:
        async with AsyncSession(self._engine) as session:
            view = await load_institution(session, inst_id, self._http, self._policy)
        old = self.views.get(inst_id)
        if view is None:
            self.views.pop(inst_id, None)
        else:
            await view.router.start()
            self.views[inst_id] = view
        if old is not None:
            await old.router.close()
        return view

    async def close(self) -> None:
        for view in self.views.values():
            await view.router.close()
        self.views.clear()
