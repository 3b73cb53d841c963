"""(On a Redis of their own: every gateway sharing a Redis sweeps every institution in it.) Deadlines are
kept by Redis's clock: replicas whose clocks disagree (one ahead, one behind) neither sweep
each other's live holds early nor keep a dead replica's holds past their TTL."""

from __future__ import annotations

import asyncio
import time

from quota import QuotaEngine, Reservation
from tests.quota.test_crash import spec

SKEW = 3600.0  # an hour: far more than the TTL


def _engine(url: str, skew: float, ttl: float) -> QuotaEngine:
    return QuotaEngine.from_url(url, reservation_ttl=ttl, clock=lambda: time.time() + skew)


async def _hold(engine: QuotaEngine, inst: str) -> Reservation:
    r = await engine.reserve(inst, "lab", "ann", input_tokens=10, max_output_tokens=0, price_in=1_000_000,
                             price_out=0, min_output_tokens=0)  # fmt: skip
    assert isinstance(r, Reservation)
    return r


async def test_a_replica_whose_clock_runs_ahead_does_not_sweep_a_live_hold(
    private_redis_url: str, inst: str
) -> None:
    true, ahead = _engine(private_redis_url, 0, 600), _engine(private_redis_url, SKEW, 600)
    try:
        await true.compile(spec(inst))
        r = await _hold(true, inst)
        assert (
            await ahead.sweep(inst) == 0
        )  # before the fix: 1, the live hold billed by a clock an hour ahead
        assert await ahead.renew([r]) == 1
        assert (await true.settle(r, 10, 0)).status == "settled"
    finally:
        await true.close()
        await ahead.close()


async def test_a_hold_made_by_a_replica_whose_clock_runs_behind_is_not_swept_early(
    private_redis_url: str, inst: str
) -> None:
    behind, true = _engine(private_redis_url, -SKEW, 600), _engine(private_redis_url, 0, 600)
    try:
        await true.compile(spec(inst))
        r = await _hold(behind, inst)
        assert await true.sweep(inst) == 0  # before the fix: 1 (its deadline was an hour early)
        assert (await behind.settle(r, 10, 0)).status == "settled"
    finally:
        await true.close()
        await behind.close()


async def test_a_hold_made_by_a_replica_whose_clock_runs_ahead_expires_after_its_ttl(
    private_redis_url: str, inst: str
) -> None:
    ahead, true = _engine(private_redis_url, SKEW, 0.5), _engine(private_redis_url, 0, 0.5)
    try:
        await true.compile(spec(inst))
        await _hold(ahead, inst)  # its replica dies here
        await asyncio.sleep(0.6)
        assert await true.sweep(inst) == 1  # before the fix: 0 for another hour
    finally:
        await true.close()
        await ahead.close()
