"""A settle that arrives after the sweeper billed its hold (late): the hold paid for what it covered, and what
was served above it reaches the ledger as an unfunded correction, never nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.accounting import Accounting
from gateway.meter import Outcome
from providers.prices import Price
from providers.usage import NormalisedUsage
from quota import QuotaEngine, Reservation
from tests.quota.conftest import new_inst, wipe
from tests.quota.test_crash import reserved_and_used, spec


@pytest.fixture
def inst(private_redis_url: str) -> Iterator[str]:
    name = new_inst()
    yield name
    wipe(private_redis_url, name)


PRICE = Price(input_per_mtok=1_000_000, output_per_mtok=1_000_000)  # 1 micro-unit a token


async def test_usage_above_an_expired_hold_is_recorded_as_overage(private_redis_url: str, inst: str) -> None:
    """On a Redis of its own: every gateway sharing a Redis sweeps every institution in it, and one running
    older code releases expired holds instead of billing them."""
    engine = QuotaEngine.from_url(private_redis_url, reservation_ttl=0.2)
    emitted: list[tuple[Outcome, str | None]] = []
    accounting = Accounting(engine, lambda o, event_id: emitted.append((o, event_id)), lambda i: {})
    view: Any = SimpleNamespace(id=inst, chargebacks={})
    try:
        await engine.compile(spec(inst))
        r = await engine.reserve(inst, "lab", "ann", input_tokens=10, max_output_tokens=20, price_in=1_000_000,
                                 price_out=1_000_000, min_output_tokens=0, request_id="req_late")  # fmt: skip
        assert isinstance(r, Reservation) and (r.reserved_cost, r.reserved_tokens) == (30, 30)
        await asyncio.sleep(0.3)  # its gateway could not reach Redis for a whole TTL
        assert await engine.sweep(inst) == 1
        assert await reserved_and_used(engine, inst) == (0, 30)  # billed at the hold
        o = Outcome(request_id="req_late", institution_id=inst, user_id="ann", unit_id="lab")
        # the provider overran max_tokens: 50 output tokens served where 20 were granted
        await accounting.finish(view, r, o, NormalisedUsage(input=10, output=50), PRICE)
        # before the fix: nothing emitted, the 30 tokens above the hold were in no ledger row
        [(event, event_id)] = emitted
        assert (event.status, event.input_tokens, event.output_tokens) == ("unsettled", 0, 30)
        assert (event.cost_micro, event.overage_micro, event.funding) == (30, 30, {})  # unfunded
        assert event_id == str(uuid.UUID(event_id))  # derived from the hold: a repeat is one ledger row
        assert await reserved_and_used(engine, inst) == (0, 30)  # the counters keep the hold: caps whole
        # a settle within the hold adds nothing
        r2 = await engine.reserve(inst, "lab", "ann", input_tokens=10, max_output_tokens=20, price_in=1_000_000,
                                  price_out=1_000_000, min_output_tokens=0, request_id="req_late2")  # fmt: skip
        assert isinstance(r2, Reservation)
        await asyncio.sleep(0.3)
        assert await engine.sweep(inst) == 1
        assert await reserved_and_used(engine, inst) == (0, 60)
        o2 = Outcome(request_id="req_late2", institution_id=inst, user_id="ann", unit_id="lab")
        await accounting.finish(view, r2, o2, NormalisedUsage(input=10, output=5), PRICE)
        assert len(emitted) == 1
    finally:
        await engine.close()


async def test_a_request_ending_after_the_usage_hand_over_leaves_its_hold_for_the_sweeper(
    private_redis_url: str, inst: str
) -> None:
    """At shutdown the usage pipeline closes (gateway/runtime.py) while a request the cut did not stop (a
    non-stream answer still coming) may yet end. Before: it settled, charging the counters, and its event
    was dropped by the closed producer, a served request missing from the ledger (attack review). Now it
    leaves its hold, which the sweeper bills at its bound and writes to the ledger."""
    engine = QuotaEngine.from_url(private_redis_url, reservation_ttl=0.3)
    emitted: list[Outcome] = []
    closed = False

    def emit(o: Outcome, event_id: str | None) -> None:
        if closed:
            raise RuntimeError("usage producer is closed")  # as usage/sidecar.py's
        emitted.append(o)

    accounting = Accounting(engine, emit, lambda i: {})
    view: Any = SimpleNamespace(id=inst, chargebacks={})
    try:
        await engine.compile(spec(inst))
        r = await engine.reserve(inst, "lab", "ann", input_tokens=10, max_output_tokens=20, price_in=1_000_000,
                                 price_out=1_000_000, min_output_tokens=0, request_id="req_straggler")  # fmt: skip
        assert isinstance(r, Reservation)
        await accounting.stop_settling()
        closed = True
        o = Outcome(request_id="req_straggler", institution_id=inst, user_id="ann", unit_id="lab")
        await accounting.finish(view, r, o, NormalisedUsage(input=10, output=5), PRICE)
        assert await reserved_and_used(engine, inst) == (30, 0)  # before: (0, 15) and no event anywhere
        await asyncio.sleep(0.4)
        assert await engine.sweep(inst) == 1
        assert await reserved_and_used(engine, inst) == (
            0,
            30,
        )  # billed at its bound; its event is the sweeper's
        assert emitted == []
    finally:
        await engine.close()
