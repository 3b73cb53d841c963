"""Faults of the gateway processes and of time: a gateway SIGKILLed with 50 streams open, and streams outliving
the reservation TTL. (A period rollover mid-stream is in test_rollover.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import fault_stack, priced_org
from tests.faults.invariants import ledger_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_gateway_sigkill_with_50_streams_open(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """50 streams (4 s each) open on gateway 0 when it is SIGKILLed; gateway 1 keeps serving. The survivor's
    sweeper must bill the dead gateway's holds (unsettled, at the hold) from what it stored at reserve."""
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, reply_tokens=40, chunk_delay_ms=100,
                     mutate=priced_org(unit_cap=20_000, member_cap=8_000, grant=1_000),
                     extra_env={"EDUAIQ_RESERVATION_TTL_SECONDS": "5"}) as fs:  # fmt: skip
        doomed, (first, second) = fs.gateways()[0], fs.urls

        async def scenario() -> None:
            streams = asyncio.create_task(
                fs.drive(50, concurrency=50, stream=True, max_tokens=40, urls=[first])
            )
            deadline = time.monotonic() + 60
            # The streams' heads arrive in other tasks of this loop: polled, as there is no event to wait on.
            while sum(1 for s in fs.sent if s.status) < 50 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            open_now = sum(1 for s in fs.sent if s.status == 200)
            assert open_now >= 40, f"only {open_now} streams open before the kill"
            doomed.send_signal(signal.SIGKILL)
            await asyncio.to_thread(doomed.wait, 30)
            await streams
            # The survivor serves on (its sweeper bills the dead gateway's holds after their deadline).
            await fs.drive(60, concurrency=6, stream=True, max_tokens=40, urls=[second])

        asyncio.run(scenario())
        fs.assert_invariants(150)


def test_streams_outliving_the_reservation_ttl(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Streams lasting ~8 s on a 5 s reservation TTL (the smallest allowed), enough of them to fill the caps: a
    hold swept while its stream still runs lets another request take the room (funded spend past the cap)."""
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, reply_tokens=40, chunk_delay_ms=200,
                     extra_env={"EDUAIQ_RESERVATION_TTL_SECONDS": "5"}) as fs:  # fmt: skip
        fs.load(90, concurrency=30, stream=True, max_tokens=40)
        fs.assert_invariants(150)
        # The double never overruns max_tokens, so no answer may cost more than its hold: unfunded overage
        # here means a hold was swept while its stream ran, its room went to another request, and the
        # provider's bill passed the caps (I1 counts funded spend only).
        rows = ledger_rows(fs.stack.db_url, fs.stack.institution)
        overage = [(r.request_id, r.overage_micro) for r in rows if r.overage_micro]
        assert not overage, (
            f"{len(overage)} of {len(rows)} requests recorded as unfunded overage: {overage[:5]}"
        )
