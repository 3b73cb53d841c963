from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STATEU = Path(__file__).with_name("stateu.yaml")  # the worked example: the repository's own copy


@pytest.fixture(scope="session")
def stateu_file() -> Path:
    return STATEU


_REDIS: list[str] = []


@pytest.fixture(autouse=True, scope="session")
def _cli_redis(redis_url: str) -> None:
    """`org import` also applies budgets to Redis: the CLI runs get the run's real Redis."""
    _REDIS[:] = [redis_url]


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDUAIQ_DATABASE_URL": db_url, "EDUAIQ_REDIS_URL": _REDIS[0]}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
