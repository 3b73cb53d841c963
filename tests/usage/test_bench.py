"""The benchmark runs end to end and reports what it measured (the figures themselves are in the report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.usage.helpers import ledger_count


@pytest.mark.slow
def test_bench_prints_throughput_and_delay(kafka_bootstrap: str, fresh_pg_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "usage.bench", "--events", "3000", "--producers", "1", "--consumers", "1",
         "--bootstrap", kafka_bootstrap, "--database-url", fresh_pg_url],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["events"] == 3000
    assert ledger_count(fresh_pg_url) == 3000
    assert result["throughput_events_per_s"] > 0
    assert 0 <= result["delay_p50_s"] <= result["delay_p99_s"] <= result["delay_max_s"]
