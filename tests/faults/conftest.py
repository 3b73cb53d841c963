"""Fixtures of the money fault suite: servers a test may break (a private broker, a private Redis with an
append-only file) and the orphan check every gateway test has (no gateway, worker or sidecar outlives it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.services.kafka import start_kafka
from cli.services.process import Child, free_port
from cli.services.redis import start_redis
from tests.gateway.orphans import no_orphan_gateways, no_orphan_gateways_after_module  # noqa: F401 (autouse)


@dataclass
class Restartable:
    """A server of the test's own that the test stops, breaks and starts again on the same port and data."""

    child: Child
    port: int
    data: Path
    persist: bool = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[Restartable]:
    """A private Redis with appendonly on (as production runs it), so its AOF can be lost on purpose."""
    port, data = free_port(), tmp_path / "redis"
    server = Restartable(start_redis(data, port, persist=True), port, data)
    try:
        yield server
    finally:
        server.child.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Restartable]:
    """A private tansu: restarting it must not disturb other tests' topics."""
    port, data = free_port(), tmp_path / "kafka"
    data.mkdir()
    server = Restartable(start_kafka(data, port), port, data)
    try:
        yield server
    finally:
        server.child.stop()
