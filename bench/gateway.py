#!/usr/bin/env python3
"""Gateway overhead, measured: the same load direct to a mock upstream and through EduAiQ, in one run.

    python bench/gateway.py [--quick] [--limits] [--out results.json]

Starts the mock upstream (bench/mock_upstream.py), a gateway with auth, budgets
and metering on (PostgreSQL, Redis and the Kafka-protocol broker from the
EDUAIQ_* settings, or embedded ones), and drives both with bench/load.py.
Prints, per scenario, direct and gateway latency and the added latency
(p50/p99) or the throughput ratio. With --limits the gateway runs use the key whose
path has rate, token and concurrency limits on every node and two contract ceilings
(bench/stack.py `KEY_LIMITED`, never binding): the same scenarios, with limits checked.
Nothing here asserts a number: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import KEY, KEY_LIMITED, Stack, load

from cli.services.process import free_port, wait_for_port


def lat(result: dict[str, Any], key: str = "latency_ms") -> dict[str, float]:
    return result.get(key) or {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--out", help="write the JSON summary here too")
    ap.add_argument("--gateway-workers", type=int, default=1)
    ap.add_argument("--limits", action="store_true", help="through the gateway with the limited key")
    opts = ap.parse_args()
    n1, nc, secs = (300, 1000, 3) if opts.quick else (2000, 6000, 10)

    with tempfile.TemporaryDirectory(prefix="eduaiq-bench-") as tmpdir:
        bench = Stack(Path(tmpdir))
        try:
            upstream = bench.start()
            gw_port = free_port()
            bench.spawn([sys.executable, "-m", "cli", "gateway", "--port", str(gw_port),
                         "--workers", str(opts.gateway_workers)], "gateway.log")  # fmt: skip
            wait_for_port("127.0.0.1", gw_port, 60)
            gateway = f"http://127.0.0.1:{gw_port}/v1"
            time.sleep(1)
            results: dict[str, Any] = {}
            scenarios = [
                ("c1_non_stream", ["-n", str(n1), "-c", "1", "--warmup", "100"]),
                ("c1_stream", ["-n", str(n1), "-c", "1", "--stream", "--warmup", "100"]),
                (
                    "open_200rps_non_stream",
                    ["--rps", "200", "--duration", str(secs), "-c", "256", "--warmup", "50"],
                ),
                (
                    "open_200rps_stream",
                    ["--rps", "200", "--duration", str(secs), "-c", "256", "--stream", "--warmup", "50"],
                ),
                ("c64_non_stream", ["-n", str(nc), "-c", "64", "--warmup", "200"]),
                ("c64_stream", ["-n", str(nc), "-c", "64", "--stream", "--warmup", "200"]),
            ]
            for name, args in scenarios:
                direct = load(upstream, "", *args)
                through = load(gateway, KEY_LIMITED if opts.limits else KEY, *args)
                results[name] = summarise(name, direct, through)
                print(json.dumps({name: results[name]}), flush=True)
            summary = {
                "scenarios": results,
                "machine": {"cores": os.cpu_count()},
                "gateway_workers": opts.gateway_workers,
                "limits": opts.limits,
            }
            if opts.out:
                Path(opts.out).write_text(json.dumps(summary, indent=2))
            print(table(results))
        finally:
            bench.close()


def summarise(name: str, direct: dict[str, Any], through: dict[str, Any]) -> dict[str, Any]:
    d, g = lat(direct), lat(through)
    out: dict[str, Any] = {
        "direct": {"p50_ms": d.get("p50"), "p99_ms": d.get("p99"), "rps": direct.get("throughput_rps")},
        "gateway": {"p50_ms": g.get("p50"), "p99_ms": g.get("p99"), "rps": through.get("throughput_rps")},
        "added_p50_ms": round((g.get("p50") or 0) - (d.get("p50") or 0), 3),
        "added_p99_ms": round((g.get("p99") or 0) - (d.get("p99") or 0), 3),
        "throughput_ratio": round(
            (through.get("throughput_rps") or 0) / (direct.get("throughput_rps") or 1), 3
        ),
        "gateway_errors": {k: v for k, v in (through.get("status_counts") or {}).items() if k != "200"},
    }
    if "ttft_ms" in through:
        out["added_ttft_p50_ms"] = round(
            (lat(through, "ttft_ms").get("p50") or 0) - (lat(direct, "ttft_ms").get("p50") or 0), 3
        )
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "",
        f"{'scenario':26} {'direct p50/p99 ms':>18} {'gateway p50/p99 ms':>19} {'added p50/p99 ms':>17} {'rps ratio':>9}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:26} {r['direct']['p50_ms']:>8}/{r['direct']['p99_ms']:<9} {r['gateway']['p50_ms']:>8}/{r['gateway']['p99_ms']:<10}"
            f" {r['added_p50_ms']:>7}/{r['added_p99_ms']:<9} {r['throughput_ratio']:>9}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
