"""Resolve every unit's allocation to a number (spec section 3).

Rounding is always down (``floor``) and exact (``Fraction``), so a resolved
share never exceeds what the rule promises: a finance office would rather see
one micro-unit unspent than one spent that no rule granted.

* ``fixed: X`` -> X.
* ``percent: P`` -> floor(P/100 x base) where base is the parent's resolved cap,
  or, when the parent inherits, the nearest ancestor's finite cap. A percent
  with no finite cap above it is a spec error.
* ``inherit`` -> ``None`` (no cap of its own).
* Member caps: ``fixed: X`` -> X; ``fair_share: F`` -> floor(F x base /
  max(1, member_count)) where base is the unit's own cap, or the nearest
  finite ancestor's when the unit inherits (an empty unit divides by 1). With
  no finite cap anywhere above, the member node inherits.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from quota.model import METRICS, InstitutionSpec, Metric, SpecError

Caps = dict[str, dict[Metric, int | None]]


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def resolve_caps(spec: InstitutionSpec) -> Caps:
    """Cap per unit per metric; ``None`` means the unit inherits (no cap of its own)."""
    units = spec.by_id()
    kids = spec.children()
    root = spec.root()
    caps: Caps = {}
    # finite[u][m]: the cap a percent child of u applies to (u's own, else its nearest finite ancestor's).
    finite: dict[str, dict[Metric, int | None]] = {}
    order = [root.id]
    for uid in order:  # breadth-first: a parent is resolved before its children
        order.extend(kids[uid])
        unit = units[uid]
        parent_finite = finite[unit.parent] if unit.parent is not None else dict.fromkeys(METRICS)
        caps[uid] = {}
        finite[uid] = {}
        for metric in METRICS:
            rule = unit.rule(metric)
            cap: int | None
            if rule.mode == "fixed":
                cap = int(rule.value)
            elif rule.mode == "percent":
                base = parent_finite[metric]
                if base is None:
                    raise SpecError(f"unit {uid}: {metric} percent has no finite cap above it")
                cap = _floor(Fraction(Decimal(rule.value)) * base / 100)
            else:
                cap = None
            caps[uid][metric] = cap
            finite[uid][metric] = cap if cap is not None else parent_finite[metric]
    return caps


def nearest_finite(spec: InstitutionSpec, caps: Caps, unit_id: str, metric: Metric) -> int | None:
    """The unit's own cap, else the nearest ancestor's finite cap, else ``None``."""
    for uid in spec.path_to_root(unit_id):
        cap = caps[uid][metric]
        if cap is not None:
            return cap
    return None


def resolve_member_caps(spec: InstitutionSpec, caps: Caps) -> Caps:
    """Cap of the ``member(m,u)`` node per unit per metric (the same for every member of the unit)."""
    out: Caps = {}
    for unit in spec.units:
        out[unit.id] = {}
        for metric in METRICS:
            rule = unit.member_cap.get(metric)
            cap: int | None = None
            if rule is not None and rule.mode == "fixed":
                cap = int(rule.value)
            elif rule is not None:
                base = nearest_finite(spec, caps, unit.id, metric)
                if base is not None:
                    cap = _floor(Fraction(Decimal(rule.value)) * base / max(1, unit.member_count))
            out[unit.id][metric] = cap
    return out
