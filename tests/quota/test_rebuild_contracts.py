"""Contract spend is money: a Redis that lost its data gets it back from the ledger's charges."""

from __future__ import annotations

from quota import Charge, ContractSpec, InstitutionSpec, QuotaEngine, Reservation, Rule, UnitSpec, keys
from quota.rebuild import recompute_counters
from tests.quota.conftest import wipe

NOW = 1_796_000_000.0  # November 2026
YEAR = "y:2026"


def spec(inst: str) -> InstitutionSpec:
    big = {"cost": Rule.fixed(10**12), "tokens": Rule.fixed(10**12)}
    return InstitutionSpec(
        id=inst,
        units=(UnitSpec(id="uni", parent=None, rules=big),),
        contracts={keys.contract_node("a"): ContractSpec(10**6, "year")},
    )


def test_recompute_adds_contract_charges_to_their_cells() -> None:
    ch = Charge("i", ("member(u,uni)", "uni"), ("m:2026-11", "m:2026-11"), {"cost": 5, "tokens": 7}, {},
                (("c:a", YEAR, 5), ("c:a|m", "m:2026-11", 5)))  # fmt: skip
    values = recompute_counters([ch, ch])
    assert values.units[("i", YEAR, "c:a", "cost")] == 10
    assert values.units[("i", "m:2026-11", "c:a|m", "cost")] == 10
    assert ("i", YEAR, "c:a", "tokens") not in values.units


async def test_rebuild_after_losing_redis_restores_the_contract_cell(redis_url: str, inst: str) -> None:
    e = QuotaEngine.from_url(redis_url, clock=lambda: NOW)
    try:
        await e.compile(spec(inst))
        charges = []
        for cost in (120, 80):
            r = await e.reserve(inst, "uni", "u", input_tokens=300, max_output_tokens=0, price_in=1_000_000,
                                price_out=0, min_output_tokens=0, scopes=(("a", "m"),))  # fmt: skip
            assert isinstance(r, Reservation)
            s = await e.settle(r, cost, 0, served=("a", "m"))
            assert s.charge is not None and s.charge.contracts == (("c:a", YEAR, cost),)
            charges.append(s.charge)
        wipe(redis_url, inst)  # Redis lost everything
        e.invalidate(inst)
        assert await e.rebuild(spec(inst), recompute_counters(charges))
        up, res, _ = await e.redis_counters(inst)
        assert up[(YEAR, "c:a", "cost")] == 200 and res[(YEAR, "c:a", "cost")] == 0
        assert await e.drift(inst, recompute_counters(charges)) == []
    finally:
        await e.close()
