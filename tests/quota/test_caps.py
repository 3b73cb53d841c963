"""Section 3: allocations resolve to exact, rounded-down numbers."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.caps import resolve_caps, resolve_member_caps
from quota.model import InstitutionSpec, MemberCap, Rule, SpecError, UnitSpec, spec_from_org
from tests.quota.conftest import stateu_doc


def chain(*rules: dict) -> InstitutionSpec:  # type: ignore[type-arg]
    units = tuple(
        UnitSpec(id=f"u{i}", parent=None if i == 0 else f"u{i - 1}", rules=r) for i, r in enumerate(rules)
    )
    return InstitutionSpec(id="x", units=units)


def test_worked_example_caps() -> None:
    spec = spec_from_org(stateu_doc("stateu"))
    caps = resolve_caps(spec)
    assert {u: c["cost"] for u, c in caps.items()} == {
        "stateu": 10000, "eng": 4000, "cs": 1000, "ada": None, "ada-teaching": 300, "cs101": 200, "cs102": None,
        "ada-research": 500, "hum": 1000,
    }  # fmt: skip
    assert all(c["tokens"] is None for c in caps.values())
    assert resolve_member_caps(spec, caps)["cs101"] == {"cost": 20, "tokens": None}


def test_percent_skips_inheriting_parents_to_the_nearest_finite_cap() -> None:
    spec = chain({"cost": Rule.fixed(1000)}, {}, {}, {"cost": Rule.percent("12.5")})
    assert resolve_caps(spec)["u3"]["cost"] == 125


def test_percent_rounds_down() -> None:
    spec = chain({"cost": Rule.fixed(999)}, {"cost": Rule.percent(33)})
    assert resolve_caps(spec)["u1"]["cost"] == 329  # 329.67


def test_percent_without_a_finite_cap_above_is_refused() -> None:
    spec = chain({"cost": Rule.fixed(10)}, {"tokens": Rule.percent(50)})
    with pytest.raises(SpecError, match="no finite cap"):
        resolve_caps(spec)


def test_root_must_be_fixed() -> None:
    from quota.model import validate

    with pytest.raises(SpecError, match="must be fixed"):
        validate(chain({"cost": Rule.percent(50)}))


def test_fair_share_divides_the_unit_cap_by_members_rounding_down() -> None:
    units = (
        UnitSpec(id="root", parent=None, rules={"cost": Rule.fixed(1000)}),
        UnitSpec(id="c", parent="root", member_cap={"cost": MemberCap.fair_share("1.5")}, member_count=7),
        UnitSpec(id="e", parent="root", member_cap={"cost": MemberCap.fair_share(2)}, member_count=0),
    )
    spec = InstitutionSpec(id="x", units=units)
    caps = resolve_caps(spec)
    m = resolve_member_caps(spec, caps)
    assert m["c"]["cost"] == 214  # 1.5 * 1000 / 7 = 214.28 (c inherits: the root's cap is the base)
    assert m["e"]["cost"] == 2000  # an empty unit divides by one
    assert m["root"]["cost"] is None and m["c"]["tokens"] is None


@given(
    base=st.integers(0, 10**12),
    percents=st.lists(st.decimals(0, 100, places=3), min_size=1, max_size=5),
    inherit=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_percent_chains_are_exact_floors(base: int, percents: list[Decimal], inherit: list[bool]) -> None:
    rules: list[dict] = [{"cost": Rule.fixed(base)}]  # type: ignore[type-arg]
    for p, skip in zip(percents, inherit, strict=False):
        if skip:
            rules.append({})
        rules.append({"cost": Rule.percent(p)})
    caps = resolve_caps(chain(*rules))
    expected = base
    for i, r in enumerate(rules[1:], start=1):
        got = caps[f"u{i}"]["cost"]
        if "cost" not in r:
            assert got is None
            continue
        expected = int(Fraction(r["cost"].value) * expected / 100)
        assert got == expected
