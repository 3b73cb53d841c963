"""Spec section 7, row by row, against real Redis (metric cost, monthly, America/Chicago).

Every "spends X" is a request whose reservation and actual usage both cost
exactly X micro-units (X input tokens at 1 micro-unit each, no output), so
reserve + settle charge X and a refusal reports X as needed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from quota import QuotaEngine, Refusal, Reservation, Settlement, spec_from_org
from quota.model import InstitutionSpec, Rule
from tests.quota.conftest import stateu_doc

NOW = datetime(2026, 11, 10, 15, 0, tzinfo=UTC).timestamp()
DEC_1_CHICAGO = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)  # midnight in America/Chicago (CST)
PATH_CS101 = ["cs101", "ada-teaching", "ada", "cs", "eng", "stateu"]
PATH_RESEARCH = ["ada-research", "ada", "cs", "eng", "stateu"]


async def spend(engine: QuotaEngine, inst: str, unit: str, user: str, amount: int) -> Settlement | Refusal:
    r = await engine.reserve(
        inst, unit, user, input_tokens=amount, max_output_tokens=0, price_in=1_000_000, price_out=0,
        min_output_tokens=0, now=NOW,
    )  # fmt: skip
    if isinstance(r, Refusal):
        return r
    assert isinstance(r, Reservation) and r.reserved_cost == amount and not r.clamped
    return await engine.settle(r, amount, 0)


async def used(engine: QuotaEngine, inst: str, unit: str, user: str) -> dict[str, int]:
    e = await engine.explain(inst, unit, user, now=NOW)
    return {n.node: n.metrics["cost"].used for n in e.nodes}


async def caps(engine: QuotaEngine, inst: str, unit: str, user: str) -> dict[str, int | None]:
    e = await engine.explain(inst, unit, user, now=NOW)
    return {n.node: n.metrics["cost"].cap for n in e.nodes}


@pytest.fixture
async def stateu(engine: QuotaEngine, inst: str) -> InstitutionSpec:
    spec = spec_from_org(stateu_doc(inst))
    await engine.compile(spec)
    return spec


async def rows_1_to_6(engine: QuotaEngine, inst: str) -> list[Settlement | Refusal]:
    return [
        await spend(engine, inst, "cs101", "s1", 15),
        await spend(engine, inst, "cs101", "s1", 10),
        await spend(engine, inst, "cs102", "s2", 285),
        await spend(engine, inst, "cs101", "s3", 1),
        await spend(engine, inst, "ada-research", "r1", 500),
        await spend(engine, inst, "ada-research", "r1", 100),
    ]


async def test_caps_resolve_as_the_table_says(
    engine: QuotaEngine, inst: str, stateu: InstitutionSpec
) -> None:
    c = await caps(engine, inst, "cs101", "s1")
    assert c == {"member(s1,cs101)": 20, "cs101": 200, "ada-teaching": 300, "ada": None, "cs": 1000,
                 "eng": 4000, "stateu": 10000}  # fmt: skip
    assert (await caps(engine, inst, "ada-research", "r1"))["ada-research"] == 500


async def test_row_1_spend_lands_on_every_node(
    engine: QuotaEngine, inst: str, stateu: InstitutionSpec
) -> None:
    s = await spend(engine, inst, "cs101", "s1", 15)
    assert isinstance(s, Settlement) and s.status == "settled" and s.charged["cost"] == 15
    assert await used(engine, inst, "cs101", "s1") == {
        "member(s1,cs101)": 15,
        **dict.fromkeys(PATH_CS101, 15),
    }


async def test_row_2_member_cap_binds(engine: QuotaEngine, inst: str, stateu: InstitutionSpec) -> None:
    await spend(engine, inst, "cs101", "s1", 15)
    r = await spend(engine, inst, "cs101", "s1", 10)
    assert isinstance(r, Refusal)
    assert (r.binding_node, r.binding_unit, r.is_member_cap) == ("member(s1,cs101)", "cs101", True)
    assert (r.metric, r.needed, r.available, r.resets_at) == ("cost", 10, 5, DEC_1_CHICAGO)
    assert (await used(engine, inst, "cs101", "s1"))["cs101"] == 15  # refused whole: nothing changed


async def test_row_3_sibling_course_uses_the_teaching_pool(
    engine: QuotaEngine, inst: str, stateu: InstitutionSpec
) -> None:
    await spend(engine, inst, "cs101", "s1", 15)
    await spend(engine, inst, "cs101", "s1", 10)
    s = await spend(engine, inst, "cs102", "s2", 285)
    assert isinstance(s, Settlement) and s.charged["cost"] == 285
    u = await used(engine, inst, "cs102", "s2")
    assert u["ada-teaching"] == 300 and u["cs102"] == 285 and u["cs"] == 300


async def test_row_4_teaching_pool_binds(engine: QuotaEngine, inst: str, stateu: InstitutionSpec) -> None:
    for unit, user, amount in (("cs101", "s1", 15), ("cs101", "s1", 10), ("cs102", "s2", 285)):
        await spend(engine, inst, unit, user, amount)
    r = await spend(engine, inst, "cs101", "s3", 1)
    assert isinstance(r, Refusal)
    assert (r.binding_node, r.is_member_cap, r.needed, r.available) == ("ada-teaching", False, 1, 0)
    assert r.resets_at == DEC_1_CHICAGO


async def test_row_5_research_fixed_allocation(
    engine: QuotaEngine, inst: str, stateu: InstitutionSpec
) -> None:
    results = await rows_1_to_6(engine, inst)
    assert isinstance(results[4], Settlement) and results[4].charge is not None
    assert results[4].charge.allocation["cost"] == 500 and results[4].charge.extras["cost"] == ()


async def test_row_5_cs_total(engine: QuotaEngine, inst: str, stateu: InstitutionSpec) -> None:
    for unit, user, amount in (("cs101", "s1", 15), ("cs102", "s2", 285), ("ada-research", "r1", 500)):
        await spend(engine, inst, unit, user, amount)
    assert (await used(engine, inst, "ada-research", "r1"))["cs"] == 800


async def test_row_6_the_extra_pays_and_ancestors_are_not_charged(
    engine: QuotaEngine, inst: str, stateu: InstitutionSpec
) -> None:
    results = await rows_1_to_6(engine, inst)
    s = results[5]
    assert isinstance(s, Settlement) and s.charge is not None
    assert s.charge.allocation["cost"] == 0 and s.charge.extras["cost"] == (("nsf-123", 1, 100),)
    u = await used(engine, inst, "ada-research", "r1")
    assert u == {"member(r1,ada-research)": 600, "ada-research": 500, "ada": 800, "cs": 800, "eng": 800,
                 "stateu": 800}  # fmt: skip
    e = await engine.explain(inst, "ada-research", "r1", now=NOW)
    (nsf,) = e.nodes[1].metrics["cost"].extras
    assert (nsf.id, nsf.amount, nsf.used, nsf.chargeback, nsf.valid_now) == (
        "nsf-123",
        250,
        100,
        "GR-NSF-123",
        True,
    )


async def test_row_7_raising_the_root_recompiles_eng_at_once(
    engine: QuotaEngine, redis_url: str, inst: str, stateu: InstitutionSpec
) -> None:
    await rows_1_to_6(engine, inst)
    before = await engine.explain(inst, "ada-research", "r1", now=NOW)
    other = QuotaEngine.from_url(redis_url)  # another replica, with the old snapshot cached
    try:
        await other.snapshot(inst)
        units = tuple(
            replace(u, rules={"cost": Rule.fixed(20000)}) if u.id == "stateu" else u for u in stateu.units
        )
        raised = replace(stateu, units=units)
        await engine.compile(raised, changed=["stateu"])
        after = await other.explain(inst, "ada-research", "r1", now=NOW)
        assert {n.node: n.metrics["cost"].cap for n in after.nodes} == {
            "member(r1,ada-research)": None, "ada-research": 500, "ada": None, "cs": 1000, "eng": 8000,
            "stateu": 20000,
        }  # fmt: skip
        # nothing else changes: every counter is as it was
        assert [(n.node, n.metrics["cost"].used, n.metrics["cost"].reserved) for n in after.nodes] == [
            (n.node, n.metrics["cost"].used, n.metrics["cost"].reserved) for n in before.nodes
        ]
        assert (await caps(other, inst, "cs101", "s1"))["ada-teaching"] == 300
        # hum is percent 10 of stateu as well: it follows the root by the same rule (1000 -> 2000)
        hum = await other.explain(inst, "hum", "x", now=NOW)
        assert hum.nodes[1].metrics["cost"].cap == 2000
        # and the other replica's very next reserve decides with the new caps
        r = await other.reserve(inst, "ada-research", "r1", input_tokens=1, max_output_tokens=0, price_in=1_000_000,
                                price_out=0, min_output_tokens=0, now=NOW)  # fmt: skip
        assert isinstance(r, Reservation) and r.remaining["cost"] is not None
        await other.release(r)
    finally:
        await other.close()


async def test_row_8_refused_whole_when_only_part_can_be_funded(
    engine: QuotaEngine, inst: str, stateu: InstitutionSpec
) -> None:
    await rows_1_to_6(engine, inst)
    before = await used(engine, inst, "ada-research", "r1")
    r = await spend(engine, inst, "ada-research", "r1", 200)
    assert isinstance(r, Refusal)
    assert (r.binding_node, r.metric, r.needed, r.available) == ("ada-research", "cost", 200, 150)
    assert r.resets_at == DEC_1_CHICAGO
    assert await used(engine, inst, "ada-research", "r1") == before
    e = await engine.explain(inst, "ada-research", "r1", now=NOW)
    assert e.nodes[1].metrics["cost"].extras[0].used == 100 and e.available["cost"] == 150
