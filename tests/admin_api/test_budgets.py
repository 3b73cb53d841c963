"""Budgets through the API: preview changes nothing, saving changes PostgreSQL, Redis and the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.models import BudgetRule
from quota import QuotaEngine, Refusal, Reservation
from tests.admin_api.conftest import Env
from tests.admin_api.helpers import audit_entries, get_row

USD = 1_000_000
PERCENT_50 = {
    "cost": {"mode": "percent", "percent": "50"},
    "member_cap": {"cost": {"mode": "fixed", "amount": 20 * USD}},
}


@pytest.fixture
async def replica(env: Env, redis_url: str) -> AsyncIterator[QuotaEngine]:
    """Quota as a gateway replica holds it: its own engine and cached snapshot, no invalidation listener."""
    engine = QuotaEngine.from_url(redis_url)
    yield engine
    await engine.close()


async def cap_in_redis(replica: QuotaEngine, env: Env, unit: str) -> int | None:
    explained = await replica.explain(env.inst, unit, "s1")
    node = next(n for n in explained.nodes if n.node == unit)
    return node.metrics["cost"].cap


async def test_fixed_to_percent_preview_then_save(env: Env, replica: QuotaEngine) -> None:
    admin = await env.login("csadmin")
    assert await cap_in_redis(replica, env, "cs101") == 200 * USD

    preview = await admin.post("/api/v1/units/cs101/budget/preview", json=PERCENT_50)
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["saved"] is False
    cs101 = next(u for u in body["units"] if u["unit_id"] == "cs101")
    # cs101 is 50% of ada-teaching, itself 30% of cs's 1000 (ada inherits): 150
    assert (cs101["caps_before"]["cost"], cs101["caps_after"]["cost"]) == (200 * USD, 150 * USD)
    assert cs101["member_caps_after"]["cost"] == 20 * USD

    # nothing saved: not in PostgreSQL, not in Redis, not in the audit log
    rule = await get_row(env, BudgetRule, env.inst, "cs101", "cost", "unit")
    assert (rule.mode, rule.amount) == ("fixed", 200 * USD)
    assert await cap_in_redis(replica, env, "cs101") == 200 * USD
    assert await audit_entries(env, "budget.") == []

    saved = await admin.put("/api/v1/units/cs101/budget", json=PERCENT_50)
    assert saved.status_code == 200, saved.text
    assert saved.json()["saved"] is True
    assert [u["caps_after"] for u in saved.json()["units"]] == [u["caps_after"] for u in body["units"]]
    rule = await get_row(env, BudgetRule, env.inst, "cs101", "cost", "unit")
    assert (rule.mode, rule.amount, rule.ratio) == ("percent", None, 50)
    # the replica's cached snapshot is not consulted for caps: the very next explain/reserve sees 150
    assert await cap_in_redis(replica, env, "cs101") == 150 * USD
    assert (await admin.get("/api/v1/units/cs101/budget")).json()["budget"]["cost"] == {
        "mode": "percent", "amount": None, "percent": "50"
    }  # fmt: skip

    [entry] = await audit_entries(env, "budget.")
    assert entry.actor == "csadmin" and entry.target == f"unit:{env.inst}/cs101"
    assert entry.before is not None and entry.after is not None
    assert entry.before["cost"] == {"mode": "fixed", "amount": 200 * USD, "percent": None}
    assert entry.after["cost"] == {"mode": "percent", "amount": None, "percent": "50"}


async def test_the_new_cap_binds_the_next_request(env: Env, replica: QuotaEngine) -> None:
    admin = await env.login("uadmin")
    # ada-research: fixed 500 plus the 250 grant; lower it to 100 and ask for 120 with no extras left
    await admin.delete("/api/v1/units/ada-research/extras/nsf-123")
    await admin.put(
        "/api/v1/units/ada-research/budget", json={"cost": {"mode": "fixed", "amount": 100 * USD}}
    )
    price = 1_000_000 * USD  # 1 USD per token: 120 output tokens cost 120 USD
    refused = await replica.reserve(env.inst, "ada-research", "r1", input_tokens=0, max_output_tokens=120,
                                    price_in=0, price_out=price, min_output_tokens=120)  # fmt: skip
    assert isinstance(refused, Refusal) and refused.binding_unit == "ada-research"
    ok = await replica.reserve(env.inst, "ada-research", "r1", input_tokens=0, max_output_tokens=100,
                               price_in=0, price_out=price)  # fmt: skip
    assert isinstance(ok, Reservation)
    await replica.release(ok)


async def test_raising_the_root_cap_moves_percent_children(env: Env) -> None:
    """Worked example row 7: stateu raised to 20000, eng (40%) becomes 8000 at once."""
    admin = await env.login("uadmin")
    saved = await admin.put(
        "/api/v1/units/stateu/budget",
        json={"period": "month", "cost": {"mode": "fixed", "amount": 20_000 * USD}},
    )
    assert saved.status_code == 200, saved.text
    caps = {u["unit_id"]: u["caps_after"]["cost"] for u in saved.json()["units"]}
    assert caps["eng"] == 8_000 * USD and caps["hum"] == 2_000 * USD and caps["cs"] == 1_000 * USD
    eng = (await admin.get("/api/v1/units/eng")).json()
    assert eng["numbers"]["metrics"]["cost"]["cap"] == 8_000 * USD


async def test_preview_warns_of_over_allocation_and_caps_below_spend(env: Env, replica: QuotaEngine) -> None:
    r = await replica.reserve(env.inst, "cs101", "s1", input_tokens=0, max_output_tokens=15, price_in=0,
                              price_out=USD * 1_000_000)  # fmt: skip
    assert isinstance(r, Reservation)
    await replica.settle(r, input_tokens=0, output_tokens=15)  # s1 spent 15 USD in cs101
    admin = await env.login("csadmin")
    below = await admin.post(
        "/api/v1/units/cs101/budget/preview", json={"cost": {"mode": "fixed", "amount": 10 * USD}}
    )
    assert [(w["code"], w["unit"], w["amount"]) for w in below.json()["warnings"]] == [
        ("cap_below_spend", "cs101", 15 * USD)
    ]
    over = await admin.post(
        "/api/v1/units/ada-teaching/budget/preview", json={"cost": {"mode": "percent", "percent": 10}}
    )
    assert [(w["code"], w["unit"], w["cap"], w["amount"]) for w in over.json()["warnings"]] == [
        ("over_allocated", "ada-teaching", 100 * USD, 200 * USD)
    ]
    teaching = next(u for u in over.json()["units"] if u["unit_id"] == "ada-teaching")
    assert teaching["used"]["cost"] == 15 * USD


async def test_budgets_quota_cannot_honour_are_refused(env: Env) -> None:
    admin = await env.login("uadmin")
    root_percent = await admin.put(
        "/api/v1/units/stateu/budget", json={"cost": {"mode": "percent", "percent": 10}}
    )
    assert root_percent.status_code == 422 and root_percent.json()["error"]["code"] == "budget_invalid"
    shape = await admin.put("/api/v1/units/cs/budget", json={"cost": {"mode": "fixed"}})
    assert shape.status_code == 422
    over = await admin.put("/api/v1/units/cs/budget", json={"cost": {"mode": "percent", "percent": 101}})
    assert over.status_code == 422
    rule = await get_row(env, BudgetRule, env.inst, "stateu", "cost", "unit")
    assert (rule.mode, rule.amount) == ("fixed", 10_000 * USD)
