"""A replica that reserves and is SIGKILLed before settling: after the deadline the sweeper frees the hold."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time
from typing import Any

from quota import QuotaEngine, Reservation
from quota.model import InstitutionSpec, Rule, UnitSpec

CAP = 1_000
TTL = 1.5


def spec(inst: str) -> InstitutionSpec:
    return InstitutionSpec(
        id=inst,
        units=(
            UnitSpec(id="uni", parent=None, rules={"cost": Rule.fixed(10**6)}),
            UnitSpec(id="lab", parent="uni", rules={"cost": Rule.fixed(CAP)}),
        ),
    )


async def _reserve_then_hang(redis_url: str, inst: str, out: Any) -> None:
    engine = QuotaEngine.from_url(redis_url, reservation_ttl=TTL)
    r = await engine.reserve(inst, "lab", "doomed", input_tokens=600, max_output_tokens=0, price_in=1_000_000,
                             price_out=0, min_output_tokens=0)  # fmt: skip
    assert isinstance(r, Reservation)
    out.put(r.id)
    await asyncio.sleep(3600)  # killed here, mid-"stream"


def _doomed(redis_url: str, inst: str, out: Any) -> None:
    asyncio.run(_reserve_then_hang(redis_url, inst, out))


async def reserved_and_used(engine: QuotaEngine, inst: str) -> tuple[int, int]:
    e = await engine.explain(inst, "lab", "someone")
    lab = e.nodes[1].metrics["cost"]
    return lab.reserved, lab.used


async def test_sigkilled_replica_holds_are_released_after_the_deadline(
    engine: QuotaEngine, redis_url: str, inst: str
) -> None:
    await engine.compile(spec(inst))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_doomed, args=(redis_url, inst, out))
    child.start()
    try:
        await asyncio.get_running_loop().run_in_executor(None, out.get, True, 60)
        assert await reserved_and_used(engine, inst) == (600, 0)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()

    # While the hold stands the budget has only 400 left: a 500 request is refused.
    blocked = await engine.reserve(inst, "lab", "other", input_tokens=500, max_output_tokens=0, price_in=1_000_000,
                                   price_out=0, min_output_tokens=0)  # fmt: skip
    assert not isinstance(blocked, Reservation) and blocked.available == 400
    assert await engine.sweep(inst) == 0  # not before its deadline

    sweeper = asyncio.create_task(engine.run_sweeper(interval=0.1, institutions=[inst]))
    try:
        deadline = time.monotonic() + 15
        while await reserved_and_used(engine, inst) != (0, 0):
            assert time.monotonic() < deadline, "the sweeper never released the dead replica's hold"
            await asyncio.sleep(0.1)
    finally:
        sweeper.cancel()
    # the budget is whole again: all 1000 can be reserved
    whole = await engine.reserve(inst, "lab", "other", input_tokens=CAP, max_output_tokens=0, price_in=1_000_000,
                                 price_out=0, min_output_tokens=0)  # fmt: skip
    assert isinstance(whole, Reservation)
    assert (await engine.release(whole)) == "released"
