"""Redis faults under load: a restart that lost its append-only file (all of it while the ledger lags, or only
its recent part), Redis hanging for 10 s, and Redis refusing connections for 10 s while streams finish."""

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


# Redis is restarted from the test's main thread, never from `asyncio.to_thread`: the server dies with the
# thread that started it (PR_SET_PDEATHSIG), and the event loop's worker threads end with `asyncio.run`, which
# would stop Redis before the ledger and the invariants are checked.


def _lose_aof(redis: Restartable) -> None:
    """Stop Redis, delete what it persisted (AOF and any snapshot), start it empty on the same port: a node
    whose disk was lost, or a failover to a replica that had nothing yet."""
    redis.child.stop()
    for path in _aof_files(redis.data):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    redis.child = start_redis(redis.data, redis.port, persist=True)


# Longer than any wait for the ledger before a rebuild (the old code gave up after 30 s and rebuilt anyway).
_LAG_S = 35.0


def _aof_files(data: Path) -> list[Path]:
    """What Redis persisted: `appendonly.aof` (Redis 6) or the `appendonlydir` of parts (Redis 7)."""
    return [p for p in data.iterdir() if p.name.startswith(("appendonly", "dump"))]


def _copy_aof(redis: Restartable, into: Path) -> None:
    """The append-only file as it is now."""
    into.mkdir()
    redis.child.proc.send_signal(signal.SIGSTOP)  # a consistent copy: nothing is appended while it is taken
    try:
        for path in _aof_files(redis.data):
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, into / path.name)
    finally:
        redis.child.proc.send_signal(signal.SIGCONT)


def _restore_aof(redis: Restartable, copy: Path) -> None:
    redis.child.stop()
    for path in _aof_files(redis.data):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in copy.iterdir():
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, redis.data / path.name)
    redis.child = start_redis(redis.data, redis.port, persist=True)


def test_redis_restart_with_aof_loss(
    pg_server_url: str, aof_redis: Restartable, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Redis loses everything while the consumer is down for longer than a rebuild would wait (35 s): a rebuild
    from the lagging ledger forgets the spend only the counters had, and the caps are passed again (I1)."""
    with fault_stack(pg_server_url, aof_redis.url, kafka_bootstrap, tmp_path) as fs:

        async def scenario() -> None:
            first = asyncio.create_task(fs.drive(110, concurrency=6))  # past the caps: later ones refused
            await asyncio.to_thread(fs.wait_ledger, 20)  # counters now hold spend the ledger also has
            await asyncio.to_thread(fs.kill_consumers)  # from here the ledger lags the counters
            await first
            _lose_aof(aof_redis)
            await fs.drive(80, concurrency=6)
            await asyncio.sleep(_LAG_S)
            fs.start_consumer()  # from this thread: a process dies with the thread that spawned it
            await fs.drive(40, concurrency=6)

        asyncio.run(scenario())
        fs.assert_invariants()


def test_redis_comes_back_with_an_older_aof(
    pg_server_url: str, aof_redis: Restartable, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Redis restarts from a copy of its append-only file taken early in the run (a failover to a replica that
    lagged, a restore from backup): the institution is still compiled, but the counters miss most of the spend.
    Serving on from them lets the caps be passed again (I1); the gateways must notice and rebuild first."""
    with fault_stack(pg_server_url, aof_redis.url, kafka_bootstrap, tmp_path) as fs:
        early = tmp_path / "aof-early"

        async def scenario() -> None:
            await fs.drive(12, concurrency=4)
            _copy_aof(aof_redis, early)
            await fs.drive(120, concurrency=6)  # enough to reach the caps
            await asyncio.to_thread(fs.settle)  # the ledger has it all; only Redis forgets
            _restore_aof(aof_redis, early)
            await fs.drive(120, concurrency=6)

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


def test_redis_refusing_connections_for_10s_while_streams_end(
    pg_server_url: str, aof_redis: Restartable, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Redis stopped (connections refused, not hanging) for 10 s while streams are delivering: the streams that
    end in that window are settled when Redis is back, charged in full, never recorded as free (I2, I3)."""
    with fault_stack(pg_server_url, aof_redis.url, kafka_bootstrap, tmp_path, reply_tokens=20,
                     chunk_delay_ms=300) as fs:  # fmt: skip

        async def scenario() -> None:
            load = asyncio.create_task(fs.drive(40, concurrency=12, stream=True, max_tokens=20))
            await asyncio.to_thread(fs.wait_ledger, 5)
            aof_redis.child.stop()
            try:
                await asyncio.sleep(10)
            finally:
                aof_redis.child = start_redis(aof_redis.data, aof_redis.port, persist=True)
            await load

        asyncio.run(scenario())
        fs.assert_invariants()
