"""Faults of the usage pipeline under load: consumer SIGKILL, broker restart, sidecar SIGKILL, poison records,
a full spool. After each, the ledger must satisfy I1-I3 (tests/faults/invariants.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from cli.services.kafka import start_kafka
from tests.faults.conftest import Restartable
from tests.faults.harness import FaultStack, fault_stack

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _during(fs: FaultStack, n: int, fault: object, delay: float = 1.0, **load: object) -> None:
    """Run `n` requests and call `fault()` (in a thread) `delay` seconds into them."""

    async def scenario() -> None:
        task = asyncio.create_task(fs.drive(n, **load))  # type: ignore[arg-type]
        await asyncio.sleep(delay)
        await asyncio.to_thread(fault)  # type: ignore[arg-type]
        await task

    asyncio.run(scenario())


def test_consumer_sigkill(pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path) as fs:

        async def scenario() -> None:
            load = asyncio.create_task(fs.drive(120, concurrency=6))
            await asyncio.to_thread(
                fs.wait_ledger, 10
            )  # mid-stream of writes, not during its first group join
            await asyncio.to_thread(fs.kill_consumers)
            await asyncio.sleep(2)
            fs.start_consumer()  # from the main thread (see FaultStack.start_consumer)
            await load

        asyncio.run(scenario())
        fs.assert_invariants()


def test_broker_restart(pg_server_url: str, redis_url: str, own_broker: Restartable, tmp_path: Path) -> None:
    """tansu keeps messages in memory only, so what the consumer had not read when it stops is the broker's
    loss, not the gateway's: load is paused and drained before the stop. Load while it is down must go to the
    sidecars' spools and reach the ledger after the restart (a new consumer: the new log starts at zero)."""
    with fault_stack(pg_server_url, redis_url, own_broker.bootstrap, tmp_path) as fs:
        fs.load(30, concurrency=4)
        fs.settle(90)
        fs.kill_consumers()
        own_broker.child.stop()
        fs.load(30, concurrency=4)  # broker down: spooled
        own_broker.child = start_kafka(own_broker.data, own_broker.port)
        fs.start_consumer()
        fs.load(30, concurrency=4)
        fs.assert_invariants(180)


def test_sidecar_sigkill(pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path) as fs:

        def kill_sidecars() -> None:
            killed = 0
            for rows in (15, 45, 75):  # a gateway respawns its sidecar when it needs it: kill those too
                fs.wait_ledger(rows)
                for proc in fs.sidecars():
                    proc.send_signal(signal.SIGKILL)
                    killed += 1
            assert killed >= 2, "no usage sidecar found under the gateways"

        _during(fs, 150, kill_sidecars, delay=0.2, concurrency=6)
        fs.assert_invariants()


def test_tombstone_and_malformed_record(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A null-valued record (tombstone) and a record that is not an event, produced into the usage topic while
    the gateways serve: billing of everything after them must not stall."""
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path) as fs:
        topic = fs.stack.env["EDUAIQ_KAFKA_TOPIC"]
        fs.load(20, concurrency=4)

        def poison() -> None:
            producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
            try:
                for partition in producer.partitions_for(topic) or {0}:
                    producer.send(topic, key=fs.stack.institution.encode(), value=None, partition=partition)
                    producer.send(topic, key=b"junk", value=b"{not an event", partition=partition)
                producer.flush(30)
            finally:
                producer.close(10)

        _during(fs, 60, poison, concurrency=4)
        fs.assert_invariants(120)


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[list[Path]]:
    """Two 256 kB tmpfs mounts (root only), filled to the last byte: the gateways' spool directories."""
    mounts = [tmp_path / f"spool{i}" for i in range(2)]
    done: list[Path] = []
    try:
        for m in mounts:
            m.mkdir()
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(m)], capture_output=True
            )
            if r.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
            done.append(m)
        yield mounts
    finally:
        for m in done:
            subprocess.run(["umount", "-l", str(m)], check=False)


def _fill(directory: Path) -> None:
    """Write zeros until the filesystem refuses (unbuffered: the refusal comes here, not at close)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_spool_on_full_tmpfs(
    pg_server_url: str, redis_url: str, own_broker: Restartable, tmp_path: Path, full_tmpfs: list[Path]
) -> None:
    """The broker goes away and the spool's disk is full: a request the gateway cannot meter must not be
    served (or its event must survive until the broker is back); none may be served and lost."""
    with fault_stack(pg_server_url, redis_url, own_broker.bootstrap, tmp_path) as fs:
        fs.load(10, concurrency=2)
        fs.settle(90)
        for m in full_tmpfs:
            _fill(m)
        fs.kill_consumers()
        own_broker.child.stop()
        fs.load(60, concurrency=4)
        own_broker.child = start_kafka(own_broker.data, own_broker.port)
        fs.start_consumer()
        fs.load(10, concurrency=2)
        fs.assert_invariants(150)


def test_control_no_fault(pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    """The same load with no fault: the harness and the checkers agree with a healthy system."""
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path) as fs:
        fs.load(120, concurrency=6)
        fs.assert_invariants()
