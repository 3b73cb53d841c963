"""The benchmark runs end to end and cleans up (it measures; it asserts no timing)."""

from __future__ import annotations

import redis

from quota import keys
from quota.bench import run_bench


def test_run_bench_reports_pairs_and_leaves_no_keys(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    result = run_bench(redis_url, seconds=0.5, concurrency=16, processes=1)
    assert result["pairs"] > 0 and result["refused"] == 0 and result["path_nodes"] == 7
    assert result["pairs_per_second"] > 0 and result["processes"] == 1
    assert result["institution"] not in r.smembers(keys.INSTITUTIONS)
    assert list(r.scan_iter(match=keys.prefix(result["institution"]) + "*", count=1000)) == []
    r.close()
