"""PostgreSQL is the truth: recompute every counter from the ledger's settled charges.

:func:`recompute_counters` is pure. The lead's code reads the ledger rows of
an institution (each row carries the :class:`~quota.results.Charge` the
settle returned) and passes them here; :meth:`QuotaEngine.rebuild` writes the
result into Redis atomically and :meth:`QuotaEngine.drift` compares it with
what Redis holds. Only spend is recomputed (``up`` per node and period,
``used`` per extra, and the contract cells ``c:<provider>[|<model>]`` from
``Charge.contracts``); holds of reservations in flight are Redis-only state and
are left as they are. Rate windows and concurrency leases are not rebuilt: they
are ephemeral (see SEMANTICS.md "Limits and contracts").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from quota.model import METRICS, Metric
from quota.results import Charge
from quota.waterfall import Plan, apply_plan


@dataclass
class CounterValues:
    """Spend counters of one or more institutions, as the ledger says they should be."""

    units: dict[tuple[str, str, str, Metric], int] = field(default_factory=dict)  # (inst, pkey, node, m)
    extras: dict[tuple[str, str, Metric], int] = field(default_factory=dict)  # (inst, extra id, m)

    def of(
        self, institution: str
    ) -> tuple[dict[tuple[str, str, Metric], int], dict[tuple[str, Metric], int]]:
        """This institution's values keyed as the engine stores them: (pkey, node, m) and (extra, m)."""
        units = {(p, n, m): v for (i, p, n, m), v in self.units.items() if i == institution}
        extras = {(x, m): v for (i, x, m), v in self.extras.items() if i == institution}
        return units, extras


def recompute_counters(charges: Iterable[Charge]) -> CounterValues:
    """Sum the charges into counters exactly as settle adds them (quota.waterfall.apply_plan)."""
    per_inst: dict[
        str, tuple[dict[tuple[str, str, Metric], list[int]], dict[tuple[str, Metric], list[int]]]
    ] = {}
    for ch in charges:
        units, extras = per_inst.setdefault(ch.institution, ({}, {}))
        path = list(zip(ch.path, ch.period_keys, strict=True))
        for m in METRICS:
            taken = tuple(ch.extras.get(m, ()))
            p = Plan(ch.allocation.get(m, 0), taken, 0)
            apply_plan(units, extras, path, m, p, slot=0)
        for node, pkey, amount in ch.contracts:  # contract cells: committed spend, cost only
            units.setdefault((pkey, node, "cost"), [0, 0])[0] += amount
    out = CounterValues()
    for inst, (units, extras) in per_inst.items():
        for (pkey, node, m), (up, _) in units.items():
            out.units[(inst, pkey, node, m)] = up
        for (x, m), (used, _) in extras.items():
            out.extras[(inst, x, m)] = used
    return out


@dataclass(frozen=True)
class Drift:
    """One counter on which Redis and the ledger disagree."""

    kind: str  # 'unit' (a node's up in a period) or 'extra' (an extra's used)
    period_key: str | None  # None for extras
    name: str  # node id or extra id
    metric: Metric
    redis: int
    ledger: int


def compare(
    redis_units: Mapping[tuple[str, str, Metric], int],
    redis_extras: Mapping[tuple[str, Metric], int],
    ledger_units: Mapping[tuple[str, str, Metric], int],
    ledger_extras: Mapping[tuple[str, Metric], int],
    covers_unit: Callable[[str], bool] = lambda period_key: True,
    covers_extra: Callable[[str], bool] = lambda extra_id: True,
) -> list[Drift]:
    """Every disagreement, zero and absent being the same value, among the counters the ledger read covered
    (``covers_unit`` of a period key, ``covers_extra`` of an extra id: see quota.sources.LedgerScope)."""
    out: list[Drift] = []
    for key in sorted(set(redis_units) | set(ledger_units)):
        if not covers_unit(key[0]):
            continue
        r, led = redis_units.get(key, 0), ledger_units.get(key, 0)
        if r != led:
            out.append(Drift("unit", key[0], key[1], key[2], r, led))
    for xkey in sorted(set(redis_extras) | set(ledger_extras)):
        if not covers_extra(xkey[0]):
            continue
        r, led = redis_extras.get(xkey, 0), ledger_extras.get(xkey, 0)
        if r != led:
            out.append(Drift("extra", None, xkey[0], xkey[1], r, led))
    return out
