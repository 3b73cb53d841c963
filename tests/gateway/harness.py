"""A real gateway process in front of the demo model server, on real PostgreSQL, Redis and Kafka.

Each stack gets its own database, its own institution id (so its Redis keys
are its own) and its own topic, so stacks of parallel runs never meet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from cli.services.process import die_with_parent, free_port, wait_for_port

DEMO_ORG = Path(__file__).resolve().parents[2] / "cli" / "demo" / "demo-university.yaml"
KEYS = {
    "alice": "sk-eduaiq-demo-alice-cs101",
    "bob": "sk-eduaiq-demo-bob-cs101",
    "rita": "sk-eduaiq-demo-rita-research",
}


@dataclass
class Stack:
    base_url: str
    institution: str
    db_url: str
    env: dict[str, str]
    upstream_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def key(self, who: str) -> str:
        return f"{KEYS[who]}-{self.institution}"

    def gateway_process(self) -> subprocess.Popen[bytes]:
        """The first `eduaiq gateway` process (with --workers, the supervisor)."""
        return next(p for p in self.procs if "gateway" in " ".join(p.args))  # type: ignore[arg-type]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], env=self.env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip


def org_doc(institution: str, upstream_url: str, mutate: Any = None) -> dict[str, Any]:
    """The demo university under a fresh id, its provider pointed at the test's demo model server."""
    doc = yaml.safe_load(DEMO_ORG.read_text())
    doc["institution"]["id"] = institution
    doc["providers"][0]["base_url"] = upstream_url
    doc["units"][0]["id"] = institution
    for key in doc["keys"]:
        key["key"] = f"{key['key']}-{institution}"
    if mutate is not None:
        mutate(doc)
    return doc


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)  # fmt: skip


@contextmanager
def gateway_stack(
    pg_server_url: str,
    redis_url: str,
    kafka_bootstrap: str,
    tmp: Path,
    *,
    mutate: Any = None,
    upstream_args: tuple[str, ...] = (),
    consumer: bool = False,
    consumers: int = 1,
    gateways: int = 1,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    from tests.conftest import _drop_database, make_database

    institution = "gw" + uuid.uuid4().hex[:10]
    db_url = make_database(pg_server_url)
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    env = {
        **os.environ,
        "EDUAIQ_DATABASE_URL": db_url,
        "EDUAIQ_REDIS_URL": redis_url,
        "EDUAIQ_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "EDUAIQ_KAFKA_TOPIC": f"usage-{institution}",
        "EDUAIQ_KAFKA_CONSUMER_GROUP": f"ledger-{institution}",
        "EDUAIQ_STATE_DIR": str(tmp),
        # The demo model server is on loopback: the operator's consent, as `eduaiq dev` gives it.
        "EDUAIQ_UPSTREAM_ALLOWED_CIDRS": "127.0.0.0/8,::1/128",
        **(extra_env or {}),
    }
    org_file = tmp / f"{institution}.yaml"
    org_file.write_text(yaml.safe_dump(org_doc(institution, upstream_url, mutate)))
    stack = Stack("", institution, db_url, env, upstream_url)
    try:
        done = stack.cli("org", "import", str(org_file))
        assert done.returncode == 0, done.stderr
        log = tmp / "upstream.log"
        stack.logs.append(log)
        stack.procs.append(
            _spawn(["selfhost.demo_model", "--port", str(upstream_port), *upstream_args], env, log)
        )
        wait_for_port("127.0.0.1", upstream_port, 30, stack.procs[-1])
        ports = []
        for i in range(gateways):
            port = free_port()
            log = tmp / f"gateway{i}.log"
            stack.logs.append(log)
            stack.procs.append(
                _spawn(
                    ["cli", "gateway", "--port", str(port), "--workers", str(workers)],
                    {**env, "EDUAIQ_SPOOL_DIR": str(tmp / f"spool{i}")},
                    log,
                )
            )
            ports.append(port)
        for port, proc in zip(ports, stack.procs[-gateways:], strict=True):
            wait_for_port("127.0.0.1", port, 60, proc)
            _wait_ready(f"http://127.0.0.1:{port}")
        for i in range(consumers if consumer else 0):
            log = tmp / f"consumer{i}.log"
            stack.logs.append(log)
            stack.procs.append(_spawn(["cli", "consume"], env, log))
        stack.base_url = f"http://127.0.0.1:{ports[0]}"
        stack.env["GATEWAY_URLS"] = ",".join(f"http://127.0.0.1:{p}" for p in ports)
        yield stack
    finally:
        for proc in reversed(stack.procs):
            proc.terminate()
        for proc in stack.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        _drop_database(pg_server_url, db_url.rsplit("/", 1)[1])


def _wait_ready(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base} not ready")


def metric_samples(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's /metrics as {(sample name, sorted labels): value}, parsed by Prometheus' own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(base_url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def serve_until_refused(base_url: str, key: str, max_tokens: int, timeout: float) -> Counter[int]:
    """Chat requests one at a time until one is refused for budget (429) or `timeout` passes; a 503 is retried
    after half a second, as a client told to retry would. How many answers of each status came back."""
    served, deadline = Counter[int](), time.monotonic() + timeout
    while served[429] == 0 and time.monotonic() < deadline:
        r = httpx.post(base_url + "/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {key}"},
                       json={"model": "demo-chat", "max_tokens": max_tokens,
                             "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        served[r.status_code] += 1
        if r.status_code == 503:
            time.sleep(0.5)
    return served
