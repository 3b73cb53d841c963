"""What the gateway benchmarks share: the servers, the mock upstream, the bench institution and the load.

`Stack.start()` brings up PostgreSQL, Redis and the Kafka-protocol broker (from the EDUAIQ_* settings,
or embedded ones), the mock upstream (bench/mock_upstream.py), the schema and an institution whose one
student key the load generator (bench/load.py) uses (`KEY`), and a twin with generous limits and contract
ceilings on every node of that key's path (`KEY_LIMITED`). Each benchmark then starts the gateway it measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
KEY_LIMITED = "sk-eduaiq-bench-lim-" + uuid.uuid4().hex  # a student of the institution with limits
# Limits on every kind of node (unit subtree, each member, provider, model) and contracts, none of which
# a benchmark comes near: what checking them costs, never a refusal.
GENEROUS = {"requests_per_minute": 100_000_000, "tokens_per_minute": 10**12, "concurrent": 100_000}


def bench_org_limited(institution: str, upstream: str) -> dict[str, Any]:
    """The bench institution with limits and contract ceilings on the whole path of its one key."""
    doc = bench_org(institution, upstream, KEY_LIMITED)
    provider = doc["providers"][0]
    provider["limits"] = GENEROUS
    provider["contract"] = {"cost": 1_000_000_000, "period": "year"}
    provider["models"][0]["limits"] = GENEROUS
    provider["models"][0]["contract"] = {"cost": 100_000_000, "period": "month"}
    root = doc["units"][0]
    root["limits"] = GENEROUS
    root["children"][0]["member_limits"] = GENEROUS
    return doc


def bench_org(institution: str, upstream: str, key: str = KEY) -> dict[str, Any]:
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
        "keys": [{"user": "student", "unit": "course", "key": key}],
    }  # fmt: skip


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.children: list[Child] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.upstream = ""

    def start(self) -> str:
        """Servers, mock upstream, schema and the bench institution; returns the upstream's base URL."""
        self.services()
        mock_port = free_port()
        self.upstream = f"http://127.0.0.1:{mock_port}/v1"
        self.spawn([sys.executable, str(HERE / "mock_upstream.py")], "mock.log",
                   {**self.env, "MOCK_PORT": str(mock_port)})  # fmt: skip
        wait_for_port("127.0.0.1", mock_port, 20)
        self.cli("migrate")
        org = self.tmp / "bench.yaml"
        org.write_text(yaml.safe_dump(bench_org("bench" + uuid.uuid4().hex[:8], self.upstream)))
        self.cli("org", "import", str(org))
        limited = self.tmp / "bench-lim.yaml"
        limited.write_text(
            yaml.safe_dump(bench_org_limited("benchlim" + uuid.uuid4().hex[:8], self.upstream))
        )
        self.cli("org", "import", str(limited))
        return self.upstream

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
