"""`eduaiq quota rebuild` run by an operator while both gateways serve (issue 16 item 2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.harness import fault_stack

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_quota_rebuild_during_load(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Three rebuilds while the consumer is down (the ledger lags the counters), each followed by traffic: a
    rebuild that resets counters from the lagging ledger lets that traffic pass the caps (I1). On the code
    before the money work: 3,240 µ$ funded on a 3,000 µ$ cap."""
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path) as fs:
        outcomes: list[str] = []

        async def scenario() -> None:
            load = asyncio.create_task(fs.drive(60, concurrency=6))
            await asyncio.to_thread(fs.wait_ledger, 10)
            # The ledger lags the counters (a consumer restarting, as in a rolling deploy): the window in which
            # a rebuild from the ledger forgets settled spend.
            await asyncio.to_thread(fs.kill_consumers)
            await load
            for _ in range(3):
                done = await asyncio.to_thread(fs.cli, "quota", "rebuild", "-i", fs.stack.institution)
                outcomes.append(f"rc={done.returncode}: {(done.stdout + done.stderr).strip()[-300:]}")
                await fs.drive(40, concurrency=6)  # traffic after each rebuild: the caps must still hold
            fs.start_consumer()  # from this thread: a process dies with the thread that spawned it

        asyncio.run(scenario())
        print("rebuilds:", *outcomes, sep="\n  ")
        fs.assert_invariants()
