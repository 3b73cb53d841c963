#!/usr/bin/env python3
"""Gateway overhead, measured: the same load direct to a mock upstream and through EduAiQ, in one run.

    python bench/gateway.py [--quick] [--out results.json]

Starts the mock upstream (bench/mock_upstream.py), a gateway with auth, budgets
and metering on (PostgreSQL, Redis and the Kafka-protocol broker from the
EDUAIQ_* settings, or embedded ones), and drives both with bench/load.py.
Prints, per scenario, direct and gateway latency and the added latency
(p50/p99) or the throughput ratio. Nothing here asserts a number: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import yaml  # noqa: E402

from cli.services.kafka import start_kafka  # noqa: E402
from cli.services.postgres import SUPERUSER, ensure_database, start_postgres  # noqa: E402
from cli.services.process import Child, die_with_parent, free_port, port_open, wait_for_port  # noqa: E402
from cli.services.redis import start_redis  # noqa: E402

KEY = "sk-eduaiq-bench-" + uuid.uuid4().hex


def bench_org(institution: str, upstream: str) -> dict[str, Any]:
    return {
        "institution": {"id": institution, "name": "Bench University", "currency": "USD", "timezone": "UTC"},
        "providers": [{"id": "mock", "type": "openai-compatible", "base_url": upstream,
                       "models": [{"id": "mock-gpt", "upstream": "mock-gpt", "max_output_tokens": 256,
                                   "price": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}]}],
        "units": [{"id": institution, "kind": "university", "budget": {"period": "month", "cost": {"fixed": 10_000_000}},
                   "children": [{"id": "course", "kind": "course", "budget": {"cost": {"fixed": 1_000_000}},
                                 "member_cap": {"cost": {"fixed": 100_000}},
                                 "members": [{"user": "student", "role": "student"}]}]}],
        "users": [{"id": "student"}],
        "keys": [{"user": "student", "unit": "course", "key": KEY}],
    }  # fmt: skip


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.children: list[Child] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)

    def services(self) -> None:
        if "EDUAIQ_DATABASE_URL" not in os.environ:
            if port_open("127.0.0.1", 5432):
                server = "postgresql://postgres@127.0.0.1:5432"
            else:
                port = free_port()
                self.children.append(start_postgres(self.tmp, port))
                server = f"postgresql://{SUPERUSER}@127.0.0.1:{port}"
            self.env["EDUAIQ_DATABASE_URL"] = f"{server}/eduaiq_bench_{uuid.uuid4().hex[:8]}"
        if "EDUAIQ_REDIS_URL" not in os.environ:
            port = free_port()
            self.children.append(start_redis(self.tmp / "redis", port, persist=False))
            self.env["EDUAIQ_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        if "EDUAIQ_KAFKA_BOOTSTRAP" not in os.environ:
            port = free_port()
            self.children.append(start_kafka(self.tmp, port))
            self.env["EDUAIQ_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
        self.env["EDUAIQ_STATE_DIR"] = str(self.tmp)
        ensure_database(self.env["EDUAIQ_DATABASE_URL"])

    def spawn(self, args: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, env=env or self.env, stdout=(self.tmp / log).open("wb"), stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)  # fmt: skip
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args], env=self.env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"eduaiq {' '.join(args)} failed: {done.stderr}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(20)
        for child in reversed(self.children):
            child.stop()


def load(base: str, key: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "load.py"), "--base-url", base, "--api-key", key, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def lat(result: dict[str, Any], key: str = "latency_ms") -> dict[str, float]:
    return result.get(key) or {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--out", help="write the JSON summary here too")
    ap.add_argument("--gateway-workers", type=int, default=1)
    opts = ap.parse_args()
    n1, nc, secs = (300, 1000, 3) if opts.quick else (2000, 6000, 10)

    with tempfile.TemporaryDirectory(prefix="eduaiq-bench-") as tmpdir:
        bench = Bench(Path(tmpdir))
        try:
            bench.services()
            mock_port, gw_port = free_port(), free_port()
            upstream = f"http://127.0.0.1:{mock_port}/v1"
            bench.spawn([sys.executable, str(HERE / "mock_upstream.py")], "mock.log",
                        {**bench.env, "MOCK_PORT": str(mock_port)})  # fmt: skip
            wait_for_port("127.0.0.1", mock_port, 20)
            bench.cli("migrate")
            org = Path(tmpdir) / "bench.yaml"
            org.write_text(yaml.safe_dump(bench_org("bench" + uuid.uuid4().hex[:8], upstream)))
            bench.cli("org", "import", str(org))
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
                through = load(gateway, KEY, *args)
                results[name] = summarise(name, direct, through)
                print(json.dumps({name: results[name]}), flush=True)
            summary = {
                "scenarios": results,
                "machine": {"cores": os.cpu_count()},
                "gateway_workers": opts.gateway_workers,
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
