"""The scheduler's quota hooks (quota/jobs.py) on real Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from core.settings import Settings
from quota import QuotaEngine, Reservation, jobs
from quota.model import InstitutionSpec, Rule, UnitSpec
from usage.jobs import CAPS_HOOK, QUOTA_HOOKS, resolve


def spec(inst: str) -> InstitutionSpec:
    return InstitutionSpec(
        id=inst,
        units=(
            UnitSpec(id="uni", parent=None, rules={"cost": Rule.fixed(5000)}),
            UnitSpec(id="dept", parent="uni", rules={"cost": Rule.percent(20)}),
            UnitSpec(id="lab", parent="dept"),
        ),
    )


def test_the_scheduler_finds_the_hooks() -> None:
    assert resolve(CAPS_HOOK) is jobs.caps_for
    assert resolve(QUOTA_HOOKS["quota.sweep_expired"][0]) is jobs.sweep_expired
    assert resolve(QUOTA_HOOKS["quota.rollover_periods"][0]) is jobs.rollover_periods


def test_caps_for_reads_what_redis_enforces(redis_url: str, inst: str) -> None:
    settings = Settings(redis_url=redis_url)
    assert jobs.caps_for(settings, inst) == {}

    async def compile_it() -> None:
        engine = QuotaEngine.from_url(redis_url)
        await engine.compile(spec(inst))
        await engine.close()

    asyncio.run(compile_it())
    assert jobs.caps_for(settings, inst) == {"uni": 5000, "dept": 1000, "lab": None}


def test_sweep_and_rollover_hooks(private_redis_url: str) -> None:
    """On a Redis of its own: these hooks act on every institution they find."""
    settings = Settings(redis_url=private_redis_url)
    inst = "t-jobs"
    old = datetime(2020, 1, 15, tzinfo=UTC).timestamp()  # long past: due for both hooks

    async def reserve_in_the_past() -> None:
        # a hold made (by Redis's clock too: deadlines follow it) in the past
        engine = QuotaEngine.from_url(private_redis_url, reservation_ttl=60, lease_clock=lambda: old)
        await engine.compile(spec(inst))
        r = await engine.reserve(inst, "lab", "ann", input_tokens=10, max_output_tokens=0, price_in=1_000_000,
                                 price_out=0, min_output_tokens=0, now=old)  # fmt: skip
        assert isinstance(r, Reservation)
        await engine.close()

    async def counters() -> dict:  # type: ignore[type-arg]
        engine = QuotaEngine.from_url(private_redis_url)
        up, res, _ = await engine.redis_counters(inst)
        await engine.close()
        return {k: (up[k], res[k]) for k in up}

    asyncio.run(reserve_in_the_past())
    assert set(asyncio.run(counters()).values()) == {(0, 10)}
    assert jobs.sweep_expired(settings) == 1
    assert set(asyncio.run(counters()).values()) == {(10, 0)}  # billed at the hold; its event waits in Redis
    assert jobs.rollover_periods(settings) == 1
    assert asyncio.run(counters()) == {}  # the 2020 period is gone
