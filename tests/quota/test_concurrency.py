"""Real concurrency on real Redis: OS processes with many asyncio tasks each race for one course.

The course has a budget whose remaining part fits exactly N requests; 1000
requests race (reserve, then settle with the same amount). Exactly N win,
the counters equal the sum of the winners' charges and no cap is exceeded.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from typing import Any

from quota import Charge, QuotaEngine, Refusal, Reservation
from quota.model import InstitutionSpec, Rule, UnitSpec
from quota.rebuild import recompute_counters

PROCESSES = 4
PER_PROCESS = 250  # 1000 requests in all, every one in flight at once
COST = 37
CAP = 10_000
ALREADY_SPENT = 1_234
N = (CAP - ALREADY_SPENT) // COST  # 236 requests fit, the 237th does not (8766 = 236 * 37 + 34)


def spec(inst: str) -> InstitutionSpec:
    return InstitutionSpec(
        id=inst,
        units=(
            UnitSpec(id="uni", parent=None, rules={"cost": Rule.fixed(10**9), "tokens": Rule.fixed(10**9)}),
            UnitSpec(id="college", parent="uni", rules={"cost": Rule.percent(50)}),
            UnitSpec(id="dept", parent="college"),
            UnitSpec(id="course", parent="dept", rules={"cost": Rule.fixed(CAP)}),
        ),
        timezone="America/Chicago",
    )


async def _race(redis_url: str, inst: str, wid: int, start: Any) -> list[dict[str, Any] | None]:
    engine = QuotaEngine.from_url(redis_url)
    await engine.snapshot(inst)
    await asyncio.get_running_loop().run_in_executor(None, start.wait)

    async def one(i: int) -> dict[str, Any] | None:
        r = await engine.reserve(inst, "course", f"s{wid}-{i % 40}", input_tokens=COST, max_output_tokens=0,
                                 price_in=1_000_000, price_out=0, min_output_tokens=0)  # fmt: skip
        if isinstance(r, Refusal):
            assert r.binding_node == "course"
            return None
        assert isinstance(r, Reservation)
        s = await engine.settle(r, COST, 0)
        assert s.status == "settled" and s.charge is not None and s.overage == {"cost": 0, "tokens": 0}
        c = s.charge
        return {"path": c.path, "keys": c.period_keys, "alloc": dict(c.allocation), "extras": dict(c.extras)}

    try:
        return list(await asyncio.gather(*(one(i) for i in range(PER_PROCESS))))
    finally:
        await engine.close()


def _racer(redis_url: str, inst: str, wid: int, start: Any, out: Any) -> None:
    try:
        out.put((wid, asyncio.run(_race(redis_url, inst, wid, start))))
    except BaseException as err:  # reported to the parent, which fails the test with it
        out.put((wid, repr(err)))


async def test_exactly_n_of_1000_racing_requests_win(engine: QuotaEngine, redis_url: str, inst: str) -> None:
    await engine.compile(spec(inst))
    pre = await engine.reserve(inst, "course", "earlier", input_tokens=ALREADY_SPENT, max_output_tokens=0,
                               price_in=1_000_000, price_out=0, min_output_tokens=0)  # fmt: skip
    assert isinstance(pre, Reservation)
    first = await engine.settle(pre, ALREADY_SPENT, 0)
    assert first.charge is not None

    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(redis_url, inst, w, start, out)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        await asyncio.sleep(1.0)  # let every process import and warm its snapshot
        start.set()
        loop = asyncio.get_running_loop()
        results = [await loop.run_in_executor(None, out.get, True, 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r for _, r in results if isinstance(r, str)]
    assert not errors, errors
    wins = [c for _, rs in results for c in rs if c is not None]
    assert len(wins) == N
    assert sum(1 for _, rs in results for c in rs if c is None) == PROCESSES * PER_PROCESS - N

    charges = [first.charge] + [
        Charge(inst, tuple(c["path"]), tuple(c["keys"]), c["alloc"], {m: tuple(map(tuple, x)) for m, x in c["extras"].items()})
        for c in wins
    ]  # fmt: skip
    values = recompute_counters(charges)
    assert await engine.drift(inst, values) == []  # counters == sum of the per-request charges
    up, res, _ = await engine.redis_counters(inst)
    key = first.charge.period_keys[1]
    assert up[(key, "course", "cost")] == ALREADY_SPENT + N * COST <= CAP
    assert up[(key, "uni", "cost")] == ALREADY_SPENT + N * COST
    assert all(v == 0 for v in res.values())  # every hold was settled
    e = await engine.explain(inst, "course", "anyone")
    assert e.available["cost"] == CAP - ALREADY_SPENT - N * COST < COST
