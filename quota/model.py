"""The budget tree as plain data: what an institution's finance office decided.

These classes are the input of the engine. The lead builds them from database
rows (or from an institution file with :func:`spec_from_org`); nothing here
touches Redis or PostgreSQL, so the reference model, the compiler and the tests
all share one vocabulary.

Choices where the spec is silent (kept exact, see the module docstrings too):

* A unit's period defaults to its parent's; the root's default is ``month``.
* ``percent`` is a decimal in 0..100 applied to the parent's cap *amount*, not
  prorated when the child's period differs from the parent's.
* An extra's window is the whole local days ``valid_from .. valid_to``
  (both inclusive) in the institution's time zone.
* An extra pays only the metrics it has an amount for (an extra bought with
  money has a ``cost`` amount and pays no ``tokens``).
* ``member_count`` counts every member of the unit, whatever the role; it is
  the divisor of ``fair_share``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal, get_args

Metric = Literal["cost", "tokens"]
METRICS: tuple[Metric, ...] = ("cost", "tokens")
Period = Literal["day", "week", "month", "semester", "year", "none"]
PERIODS: tuple[Period, ...] = get_args(Period)
RuleMode = Literal["fixed", "percent", "inherit"]
MemberCapMode = Literal["fixed", "fair_share"]

# Unit, user and extra ids end up inside Redis key and field names: keep them
# free of the separators and hash-tag braces those names use.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-@+]*$")


class SpecError(ValueError):
    """An institution spec the engine cannot honour; the message names the unit."""


@dataclass(frozen=True)
class Rule:
    """A unit's allocation for one metric (spec section 3)."""

    mode: RuleMode
    value: int | Decimal = 0

    @staticmethod
    def fixed(amount: int) -> Rule:
        return Rule("fixed", int(amount))

    @staticmethod
    def percent(p: int | float | str | Decimal) -> Rule:
        return Rule("percent", Decimal(str(p)))

    @staticmethod
    def inherit() -> Rule:
        return Rule("inherit", 0)


@dataclass(frozen=True)
class MemberCap:
    """Limit of each member's own spend in a unit: ``fixed`` amount or ``fair_share`` factor."""

    mode: MemberCapMode
    value: int | Decimal

    @staticmethod
    def fixed(amount: int) -> MemberCap:
        return MemberCap("fixed", int(amount))

    @staticmethod
    def fair_share(factor: int | float | str | Decimal) -> MemberCap:
        return MemberCap("fair_share", Decimal(str(factor)))


@dataclass(frozen=True)
class ExtraSpec:
    """Money a unit bought itself; spent only after allocation runs out (spec section 4)."""

    id: str
    amounts: Mapping[Metric, int]
    valid_from: date
    valid_to: date
    chargeback: str | None = None


@dataclass(frozen=True)
class UnitSpec:
    id: str
    parent: str | None
    kind: str = "unit"
    name: str = ""
    period: Period | None = None
    rules: Mapping[Metric, Rule] = field(default_factory=dict)
    member_cap: Mapping[Metric, MemberCap] = field(default_factory=dict)
    extras: tuple[ExtraSpec, ...] = ()
    member_count: int = 0

    def rule(self, metric: Metric) -> Rule:
        return self.rules.get(metric, Rule.inherit())


@dataclass(frozen=True)
class Semester:
    id: str
    start: date
    end: date  # inclusive: the last teaching day belongs to the semester


@dataclass(frozen=True)
class LimitSpec:
    """Rate limits of one node (a unit's subtree, each member of a unit, a provider or a provider model).

    ``None`` means no such limit. Requests and tokens count over a sliding 60 s window of 1 s buckets;
    ``concurrent`` counts requests in progress (leases), see SEMANTICS.md "Limits and contracts".
    """

    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None


@dataclass(frozen=True)
class ContractSpec:
    """A provider (or provider model) contract's committed-spend ceiling per month or year (micro-units)."""

    cost: int
    period: Literal["month", "year"]


@dataclass(frozen=True)
class InstitutionSpec:
    id: str
    units: tuple[UnitSpec, ...]
    timezone: str = "UTC"
    semesters: tuple[Semester, ...] = ()
    year_start_month: int = 1  # 7 for a fiscal year starting in July
    name: str = ""
    # Node id (quota.keys.limit_unit/limit_member/limit_provider/limit_model) -> its limits; empty
    # (the default) keeps every request on the path with no limit work at all.
    limits: Mapping[str, LimitSpec] = field(default_factory=dict)
    # Contract node id (quota.keys.contract_node) -> its ceiling.
    contracts: Mapping[str, ContractSpec] = field(default_factory=dict)

    def by_id(self) -> dict[str, UnitSpec]:
        """Built once per spec (specs are frozen): a 2,000-unit tree asks for it per unit and per level.
        Callers must not mutate the result."""
        return self._by_id

    @cached_property
    def _by_id(self) -> dict[str, UnitSpec]:
        return {u.id: u for u in self.units}

    def root(self) -> UnitSpec:
        roots = [u for u in self.units if u.parent is None]
        if len(roots) != 1:
            raise SpecError(f"institution {self.id}: expected exactly one root unit, found {len(roots)}")
        return roots[0]

    def children(self) -> dict[str, list[str]]:
        """Built once per spec, like `by_id`; callers must not mutate the result."""
        return self._children

    @cached_property
    def _children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {u.id: [] for u in self.units}
        for u in self.units:
            if u.parent is not None:
                out[u.parent].append(u.id)
        return out

    def path_to_root(self, unit_id: str) -> list[str]:
        """Unit ids from ``unit_id`` up to the root (the path of spec section 1, without the member)."""
        units = self.by_id()
        if unit_id not in units:
            raise SpecError(f"institution {self.id}: unknown unit {unit_id!r}")
        out = [unit_id]
        while (parent := units[out[-1]].parent) is not None:
            out.append(parent)
        return out

    def subtree(self, unit_id: str) -> list[str]:
        """``unit_id`` and every unit below it (what a budget edit there can change)."""
        kids = self.children()
        out, stack = [], [unit_id]
        while stack:
            uid = stack.pop()
            out.append(uid)
            stack.extend(kids.get(uid, ()))
        return out

    def effective_period(self, unit_id: str) -> Period:
        for uid in self.path_to_root(unit_id):
            period = self.by_id()[uid].period
            if period is not None:
                return period
        return "month"


_LIMIT_NODE = re.compile(r"^(u|m):[^\s|:]+$|^p:[^\s|]+$|^pm:[^\s|]+\|[^\s|]+$")
_CONTRACT_NODE = re.compile(r"^c:[^\s|]+(\|[^\s|]+)?$")


def _validate_limits(spec: InstitutionSpec, units: set[str]) -> None:
    """Node ids go into Redis key names, tab-separated hold records and space-separated settle replies:
    no whitespace, one `|` between provider and model; every number a positive integer below 2^53."""
    for node, lim in spec.limits.items():
        if not _LIMIT_NODE.match(node) or (node[0] in "um" and node.split(":", 1)[1] not in units):
            raise SpecError(
                f"limit node {node!r}: not u:<unit>, m:<unit>, p:<provider> or pm:<provider>|<model>"
            )
        values = (lim.rpm, lim.tpm, lim.concurrent)
        if all(v is None for v in values) or any(v is not None and not 1 <= v < 2**53 for v in values):
            raise SpecError(f"limit node {node}: give at least one limit, each a whole number >= 1")
    for node, con in spec.contracts.items():
        if not _CONTRACT_NODE.match(node):
            raise SpecError(f"contract node {node!r}: not c:<provider> or c:<provider>|<model>")
        if con.period not in ("month", "year") or not 0 < con.cost < 2**53:
            raise SpecError(f"contract {node}: period month or year, cost > 0 and below 2^53 micro-units")


def validate(spec: InstitutionSpec) -> None:
    """Refuse a spec the engine could not apply exactly; the org-file importer reports friendlier errors."""
    if not _ID.match(spec.id):
        raise SpecError(f"institution id {spec.id!r}: use letters, digits and _ . - @ +")
    seen: set[str] = set()
    extra_ids: set[str] = set()
    for u in spec.units:
        if not _ID.match(u.id):
            raise SpecError(f"unit id {u.id!r}: use letters, digits and _ . - @ +")
        if u.id in seen:
            raise SpecError(f"unit {u.id}: duplicate id")
        seen.add(u.id)
        if u.period is not None and u.period not in PERIODS:
            raise SpecError(f"unit {u.id}: unknown period {u.period!r}")
        if u.member_count < 0:
            raise SpecError(f"unit {u.id}: member_count must be >= 0")
        for metric, rule in u.rules.items():
            if metric not in METRICS:
                raise SpecError(f"unit {u.id}: unknown metric {metric!r}")
            if rule.mode == "fixed" and int(rule.value) < 0:
                raise SpecError(f"unit {u.id}: {metric} fixed must be >= 0")
            if rule.mode == "percent" and not (0 <= Decimal(rule.value) <= 100):
                raise SpecError(f"unit {u.id}: {metric} percent must be 0..100")
        for metric, cap in u.member_cap.items():
            if metric not in METRICS:
                raise SpecError(f"unit {u.id}: unknown metric {metric!r}")
            if Decimal(cap.value) < 0:
                raise SpecError(f"unit {u.id}: member cap must be >= 0")
        for x in u.extras:
            if not _ID.match(x.id):
                raise SpecError(f"extra id {x.id!r}: use letters, digits and _ . - @ +")
            if x.id in extra_ids:
                raise SpecError(f"extra {x.id}: duplicate id")
            extra_ids.add(x.id)
            if x.valid_from > x.valid_to:
                raise SpecError(f"extra {x.id}: valid_from after valid_to")
            if any(a < 0 or m not in METRICS for m, a in x.amounts.items()):
                raise SpecError(f"extra {x.id}: amounts must be >= 0 per known metric")
    for u in spec.units:
        if u.parent is not None and u.parent not in seen:
            raise SpecError(f"unit {u.id}: unknown parent {u.parent!r}")
    _validate_limits(spec, seen)
    root = spec.root()
    for metric, rule in root.rules.items():
        if rule.mode != "fixed":
            raise SpecError(f"unit {root.id}: the root's {metric} budget must be fixed")
    for u in spec.units:  # cycles would make path_to_root loop
        steps, cur = 0, u
        while cur.parent is not None:
            cur = spec.by_id()[cur.parent]
            steps += 1
            if steps > len(spec.units):
                raise SpecError(f"unit {u.id}: parent chain has a cycle")
    if not 1 <= spec.year_start_month <= 12:
        raise SpecError("year_start_month must be 1..12")
    ordered = sorted(spec.semesters, key=lambda s: s.start)
    for s in ordered:
        if s.start > s.end:
            raise SpecError(f"semester {s.id}: start after end")
    for a, b in itertools.pairwise(ordered):
        if b.start <= a.end:
            raise SpecError(f"semesters {a.id} and {b.id} overlap")
    if len({s.id for s in spec.semesters}) != len(spec.semesters):
        raise SpecError("semester ids must be unique")


def _amount(metric: Metric, raw: Any, cost_scale: int) -> int:
    """Exact integer amount; ``cost`` is scaled (currency units to micro-units) and must come out whole."""
    value = Decimal(str(raw)) * (cost_scale if metric == "cost" else 1)
    if value != value.to_integral_value():
        raise SpecError(f"{metric} amount {raw!r} is not a whole number of units")
    return int(value)


def _rules(budget: Mapping[str, Any] | None, cost_scale: int) -> dict[Metric, Rule]:
    out: dict[Metric, Rule] = {}
    for metric in METRICS:
        raw = (budget or {}).get(metric)
        if raw is None:
            continue
        if "fixed" in raw:
            out[metric] = Rule.fixed(_amount(metric, raw["fixed"], cost_scale))
        elif "percent" in raw:
            out[metric] = Rule.percent(raw["percent"])
    return out


def _member_caps(raw: Mapping[str, Any] | None, cost_scale: int) -> dict[Metric, MemberCap]:
    out: dict[Metric, MemberCap] = {}
    for metric in METRICS:
        item = (raw or {}).get(metric)
        if item is None:
            continue
        if "fixed" in item:
            out[metric] = MemberCap.fixed(_amount(metric, item["fixed"], cost_scale))
        elif "fair_share" in item:
            out[metric] = MemberCap.fair_share(item["fair_share"])
    return out


def _as_date(v: date | str) -> date:
    return v if isinstance(v, date) else date.fromisoformat(str(v))


def spec_from_org(doc: Mapping[str, Any], cost_scale: int = 1) -> InstitutionSpec:
    """Read the budget part of an institution file (docs/spec/org-file.md) as parsed YAML.

    ``cost_scale`` multiplies every ``cost`` amount: 1 keeps the file's numbers
    as micro-units (how the tests read the worked example), 1_000_000 reads
    them as currency units. The org importer owns the friendly per-path
    validation; this only maps the structure.
    """
    inst = doc["institution"]
    units: list[UnitSpec] = []

    def walk(items: Iterable[Mapping[str, Any]], parent: str | None) -> None:
        for item in items:
            budget = item.get("budget") or {}
            extras = tuple(
                ExtraSpec(
                    id=str(x["id"]),
                    amounts={m: _amount(m, x[m], cost_scale) for m in METRICS if m in x},
                    valid_from=_as_date(x["valid_from"]),
                    valid_to=_as_date(x["valid_to"]),
                    chargeback=x.get("chargeback"),
                )
                for x in item.get("extras") or ()
            )
            units.append(
                UnitSpec(
                    id=str(item["id"]),
                    parent=parent,
                    kind=str(item.get("kind", "unit")),
                    name=str(item.get("name", item["id"])),
                    period=budget.get("period"),
                    rules=_rules(budget, cost_scale),
                    member_cap=_member_caps(item.get("member_cap"), cost_scale),
                    extras=extras,
                    member_count=len(item.get("members") or ()),
                )
            )
            walk(item.get("children") or (), str(item["id"]))

    walk(doc.get("units") or (), None)
    semesters = tuple(
        Semester(id=str(s["id"]), start=_as_date(s["start"]), end=_as_date(s["end"]))
        for s in inst.get("semesters") or ()
    )
    spec = InstitutionSpec(
        id=str(inst["id"]),
        name=str(inst.get("name", inst["id"])),
        timezone=str(inst.get("timezone", "UTC")),
        semesters=semesters,
        year_start_month=int(inst.get("year_start_month", 1)),
        units=tuple(units),
    )
    validate(spec)
    return spec
