"""Fixtures of the quota tests: real Redis (tests/conftest.py's `redis_url`), one institution id per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from quota import QuotaEngine, keys

_HERE = Path(__file__).resolve()
# The worked example: the repo's copy, else the shared fixtures folder beside the repo.
FIXTURES = (
    _HERE.parents[1] / "orgfile" / "stateu.yaml",
    _HERE.parents[3] / "shared" / "fixtures" / "stateu.yaml",
)


def new_inst() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def wipe(redis_url: str, inst: str) -> None:
    """Delete every key of an institution (and its entry in the sweeper's list)."""
    r = redis.Redis.from_url(redis_url)
    try:
        for k in r.scan_iter(match=keys.prefix(inst) + "*", count=1000):
            r.delete(k)
        r.srem(keys.INSTITUTIONS, inst)
    finally:
        r.close()


@pytest.fixture
def inst(redis_url: str) -> Iterator[str]:
    name = new_inst()
    yield name
    wipe(redis_url, name)


# Tests pass explicit instants (the worked example is in November 2026). Their reservations get
# a deadline far ahead so that a real-time sweeper in another process never expires them.
FAR_TTL = 100 * 365 * 86400.0


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[QuotaEngine]:
    e = QuotaEngine.from_url(redis_url, reservation_ttl=FAR_TTL)
    yield e
    await e.close()


def stateu_doc(inst_id: str) -> dict[str, Any]:
    """The spec's worked example (spec section 7) as an institution file, under a test's own id."""
    path = next(p for p in FIXTURES if p.exists())
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    doc["institution"]["id"] = inst_id
    return doc
