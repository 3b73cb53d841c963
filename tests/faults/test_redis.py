"""Redis faults under load: a restart that lost its append-only file, and Redis unreachable for 10 s."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest

from cli.services.redis import start_redis
from tests.faults.conftest import Restartable
from tests.faults.harness import fault_stack

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _lose_aof(redis: Restartable) -> None:
    """Stop Redis, delete what it persisted (AOF and any snapshot), start it empty on the same port: a node
    whose disk was lost, or a failover to a replica that had nothing yet."""
    redis.child.stop()
    for path in redis.data.iterdir():
        if path.name.startswith(("appendonly", "dump")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    redis.child = start_redis(redis.data, redis.port, persist=True)


def test_redis_restart_with_aof_loss(
    pg_server_url: str, aof_redis: Restartable, kafka_bootstrap: str, tmp_path: Path
) -> None:
    with fault_stack(pg_server_url, aof_redis.url, kafka_bootstrap, tmp_path) as fs:

        async def scenario() -> None:
            first = asyncio.create_task(fs.drive(60, concurrency=6))
            await asyncio.to_thread(fs.wait_ledger, 20)  # counters now hold spend the ledger also has
            await asyncio.to_thread(_lose_aof, aof_redis)
            await first
            await fs.drive(80, concurrency=6)

        asyncio.run(scenario())
        fs.assert_invariants()


def test_redis_unreachable_for_10s(
    pg_server_url: str, aof_redis: Restartable, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGSTOP the Redis server for 10 s under load (connections hang rather than fail), then SIGCONT."""
    with fault_stack(pg_server_url, aof_redis.url, kafka_bootstrap, tmp_path) as fs:
        pid = aof_redis.child.proc.pid

        async def scenario() -> None:
            load = asyncio.create_task(fs.drive(120, concurrency=6))
            await asyncio.to_thread(fs.wait_ledger, 10)
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(10)
            finally:
                os.kill(pid, signal.SIGCONT)
            await load

        try:
            asyncio.run(scenario())
        finally:
            os.kill(pid, signal.SIGCONT)
        fs.assert_invariants()
