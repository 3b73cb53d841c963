"""A replica that reserves and is SIGKILLed before settling: after the deadline the sweeper bills the hold
(nobody can say what was served, and the hold is an upper bound that fitted the caps) and hands it, with the
event skeleton the replica stored, to whoever writes the ledger."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time
from typing import Any

from quota import QuotaEngine, Reservation, UnsettledHold
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
                             price_out=0, min_output_tokens=0, meta='{"request_id":"req_doomed"}')  # fmt: skip
    assert isinstance(r, Reservation)
    out.put(r.id)
    await asyncio.sleep(3600)  # killed here, mid-"stream"


def _doomed(redis_url: str, inst: str, out: Any) -> None:
    asyncio.run(_reserve_then_hang(redis_url, inst, out))


async def reserved_and_used(engine: QuotaEngine, inst: str) -> tuple[int, int]:
    e = await engine.explain(inst, "lab", "someone")
    lab = e.nodes[1].metrics["cost"]
    return lab.reserved, lab.used


async def test_sigkilled_replica_holds_are_billed_after_the_deadline(
    engine: QuotaEngine, redis_url: str, inst: str
) -> None:
    await engine.compile(spec(inst))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_doomed, args=(redis_url, inst, out))
    child.start()
    try:
        rid = await asyncio.get_running_loop().run_in_executor(None, out.get, True, 60)
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

    billed: list[UnsettledHold] = []
    sweeper = asyncio.create_task(
        engine.run_sweeper(interval=0.1, institutions=[inst], on_unsettled=billed.append)
    )
    try:
        deadline = time.monotonic() + 15
        while not billed:
            assert time.monotonic() < deadline, "the sweeper never billed the dead replica's hold"
            await asyncio.sleep(0.1)
    finally:
        sweeper.cancel()
    # the hold became spend, exactly once, and its ledger record names what it took
    assert await reserved_and_used(engine, inst) == (0, 600)
    [hold] = billed
    assert (hold.reservation_id, hold.cost, hold.tokens, hold.meta) == (
        rid,
        600,
        600,
        '{"request_id":"req_doomed"}',
    )
    assert hold.charge.path == ("member(doomed,lab)", "lab", "uni") and hold.charge.allocation["cost"] == 600
    assert await engine.drain_unsettled(inst, billed.append) == 0 and len(billed) == 1
    # the rest of the cap is still there, and not a micro-unit more
    rest = await engine.reserve(inst, "lab", "other", input_tokens=CAP - 600, max_output_tokens=0,
                                price_in=1_000_000, price_out=0, min_output_tokens=0)  # fmt: skip
    assert isinstance(rest, Reservation)
    assert (await engine.release(rest)) == "released"
