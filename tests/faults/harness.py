"""Real load through two `eduaiq gateway` processes, a consumer and an upstream double that logs what it served.

Built on tests/gateway/harness.py's `gateway_stack` (real PostgreSQL, Redis, tansu, the demo model server, the
usage sidecar each gateway spawns, `eduaiq consume`). What this module adds is what a fault test needs around
it: an institution file with money caps small enough to be reached, prices that make every token cost
something, a load generator that remembers which gateway request id carried which prompt marker, the
double's served log, and the wait for the ledger to settle before the invariants are checked.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.faults.invariants import Violations, check_all, ledger_rows, served_log
from tests.gateway.harness import Stack, _spawn, gateway_stack

# Integer prices in dollars per million tokens are integer micro-dollars per token: every cost the
# invariants compute is exact, so I3 can demand equality rather than a tolerance.
PRICE = {"input_per_mtok": 1, "output_per_mtok": 2}
UNIT_CAP = 3_000  # µ$ on cs101 (the course of alice and bob)
MEMBER_CAP = 2_000  # µ$ per member of cs101
GRANT = 600  # µ$ grant (extra) on cs101, spent after the allocation


def cs101(doc: dict[str, Any]) -> dict[str, Any]:
    unit: dict[str, Any] = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0][
        "children"
    ][0]
    assert unit["id"] == "cs101"
    return unit


def priced_org(
    unit_cap: int = UNIT_CAP,
    member_cap: int | None = MEMBER_CAP,
    grant: int | None = GRANT,
    period: str | None = None,
) -> Callable[[dict[str, Any]], None]:
    """The demo university with every model priced, cs101 capped at `unit_cap` µ$, each member at `member_cap`,
    and a grant of `grant` µ$ valid for years (None leaves that cap out)."""

    def mutate(doc: dict[str, Any]) -> None:
        for model in doc["providers"][0]["models"]:
            model["price"] = dict(PRICE)
        course = cs101(doc)
        course["budget"] = {"cost": {"fixed": unit_cap / 1_000_000}}
        if period is not None:
            doc["units"][0]["budget"]["period"] = period
        if member_cap is None:
            course.pop("member_cap", None)
        else:
            course["member_cap"] = {"cost": {"fixed": member_cap / 1_000_000}}
        if grant is not None:
            course["extras"] = [
                {
                    "id": "faults-grant",
                    "cost": grant / 1_000_000,
                    "valid_from": "2020-01-01",
                    "valid_to": "2099-12-31",
                }
            ]

    return mutate


@dataclass
class Sent:
    """One request as the client saw it: its marker (the prompt's start), the gateway's request id if the
    answer's head arrived, and the status (0: the connection failed before a head)."""

    marker: str
    request_id: str | None = None
    status: int = 0


@dataclass
class FaultStack:
    stack: Stack
    tmp: Path
    served_path: Path
    org: dict[str, Any]
    sent: list[Sent] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return self.stack.env["GATEWAY_URLS"].split(",")

    def _role(self, command: str) -> list[subprocess.Popen[bytes]]:
        """Processes started as `python -m cli <command>` (matched on the argv slot, not anywhere in it: the
        double's argv holds a path under the test's directory, whose name may say "gateway" or "consumer")."""
        return [p for p in self.stack.procs if list(p.args)[2:4] == ["cli", command]]  # type: ignore[arg-type]

    def gateways(self) -> list[subprocess.Popen[bytes]]:
        return self._role("gateway")

    def consumers(self) -> list[subprocess.Popen[bytes]]:
        return self._role("consume")

    def sidecars(self) -> list[psutil.Process]:
        """The usage sidecars (`python -m usage.sidecar`) the gateway processes spawned."""
        found = []
        for gw in self.gateways():
            if gw.poll() is not None:
                continue
            for child in psutil.Process(gw.pid).children(recursive=True):
                try:
                    if "usage.sidecar" in " ".join(child.cmdline()):
                        found.append(child)
                except psutil.NoSuchProcess:
                    pass
        return found

    def start_consumer(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Only from the main thread: the consumer gets SIGTERM when the thread that spawned it ends
        (PR_SET_PDEATHSIG is per thread), and `asyncio.to_thread`'s workers end with `asyncio.run`, which
        would stop the consumer before the ledger is checked."""
        assert threading.current_thread() is threading.main_thread(), (
            "start the consumer from the main thread"
        )
        n = len(self.consumers())
        log = self.tmp / f"consumer-extra{n}.log"
        self.stack.logs.append(log)
        proc = _spawn(["cli", "consume"], {**self.stack.env, **(env or {})}, log)
        self.stack.procs.append(proc)
        return proc

    def wait_ledger(self, at_least: int, timeout: float = 90) -> None:
        """Until the ledger has `at_least` rows: the consumer has joined its group and is writing."""
        deadline = time.monotonic() + timeout
        while len(ledger_rows(self.stack.db_url, self.stack.institution)) < at_least:
            assert time.monotonic() < deadline, f"the ledger never reached {at_least} rows"
            time.sleep(0.3)

    def kill_consumers(self) -> None:
        for proc in self.consumers():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)

    # -- load ------------------------------------------------------------------------------------------
    def load(self, n: int, **kwargs: Any) -> list[Sent]:
        """`n` requests spread over every live gateway (blocking); see `drive`."""
        return asyncio.run(self.drive(n, **kwargs))

    async def drive(
        self,
        n: int,
        *,
        concurrency: int = 8,
        users: tuple[str, ...] = ("alice", "bob"),
        max_tokens: int = 20,
        stream: bool = False,
        urls: list[str] | None = None,
        body: Callable[[str], dict[str, Any]] | None = None,
        path: str = "/v1/chat/completions",
        client_timeout: float = 120,
    ) -> list[Sent]:
        """Send `n` requests, `concurrency` at a time, alternating users and gateways. Each carries a unique
        marker at the start of its prompt; the double logs it, which is how I2 finds the request."""
        targets = urls or self.urls
        sem = asyncio.Semaphore(concurrency)
        out: list[Sent] = []

        async def one(client: httpx.AsyncClient, i: int) -> None:
            marker = f"m{uuid.uuid4().hex[:12]}"
            sent = Sent(marker)
            out.append(sent)
            self.sent.append(sent)
            who = users[i % len(users)]
            payload = (body or _chat_body(max_tokens, stream))(marker)
            async with sem:
                try:
                    async with client.stream(
                        "POST",
                        targets[i % len(targets)] + path,
                        headers={"Authorization": f"Bearer {self.stack.key(who)}"},
                        json=payload,
                    ) as r:
                        sent.status = r.status_code
                        sent.request_id = r.headers.get("x-request-id")
                        async for _ in r.aiter_bytes():
                            pass
                except httpx.HTTPError:
                    pass  # a fault cut it: the double's log says whether it was served

        async with httpx.AsyncClient(
            timeout=client_timeout, limits=httpx.Limits(max_connections=concurrency + 4)
        ) as c:
            await asyncio.gather(*(one(c, i) for i in range(n)))
        return out

    # -- settling and checking -----------------------------------------------------------------------
    def settle(self, timeout: float = 120) -> None:
        """Wait until every request the double served has a ledger row it can be matched to (by request id
        when the client learnt it, else by count), and the ledger stops growing; give up at `timeout` and
        let the invariants say what is missing."""
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            rows = ledger_rows(self.stack.db_url, self.stack.institution)
            served = served_log(self.served_path)
            if len(rows) != last:
                last, stable_since = len(rows), time.monotonic()
            have = {r.request_id for r in rows}
            ids = {s.marker: s.request_id for s in self.sent}
            missing = [e for e in served if ids.get(e["marker"]) not in have]
            if len([r for r in rows if r.status in SERVED]) >= len(served) and not missing:
                if time.monotonic() - stable_since > 3:
                    return
            time.sleep(1)

    def violations(self) -> Violations:
        return check_all(
            self.org,
            ledger_rows(self.stack.db_url, self.stack.institution),
            served_log(self.served_path),
            self.sent,
        )

    def assert_invariants(self, timeout: float = 120) -> None:
        self.settle(timeout)
        found = self.violations()
        rows = ledger_rows(self.stack.db_url, self.stack.institution)
        summary = (
            f"{len(served_log(self.served_path))} answers served upstream, {len(self.sent)} sent, "
            f"ledger rows {len(rows)} ({', '.join(sorted({r.status for r in rows}))})"
        )
        assert not found, f"invariants broken ({summary}):\n" + "\n".join(f"  {v}" for v in found)
        # A run in which the upstream served (almost) nothing proves nothing.
        assert len(served_log(self.served_path)) >= 2, f"too little was served to check anything ({summary})"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], env=self.stack.env, capture_output=True,
                              text=True, timeout=180)  # fmt: skip


SERVED = frozenset({"ok", "clamped", "client_abort", "unsettled", "upstream_error"})


def _chat_body(max_tokens: int, stream: bool) -> Callable[[str], dict[str, Any]]:
    def body(marker: str) -> dict[str, Any]:
        return {
            "model": "demo-chat",
            "max_tokens": max_tokens,
            "stream": stream,
            "messages": [{"role": "user", "content": f"{marker} tell me something"}],
        }

    return body


@contextmanager
def fault_stack(
    pg_server_url: str,
    redis_url: str,
    kafka_bootstrap: str,
    tmp: Path,
    *,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    reply_tokens: int = 20,
    chunk_delay_ms: int = 0,
    gateways: int = 2,
    extra_env: dict[str, str] | None = None,
    gateway_env: dict[str, str] | None = None,
) -> Iterator[FaultStack]:
    """Two gateways (by default), one consumer, the demo model logging what it served to `tmp/served.jsonl`."""
    served = tmp / "served.jsonl"
    served.touch()
    upstream = ("--served-log", str(served), "--reply-tokens", str(reply_tokens))
    if chunk_delay_ms:
        upstream += ("--chunk-delay-ms", str(chunk_delay_ms))
    mutate = mutate or priced_org()
    run = uuid.uuid4().hex
    env = {**(extra_env or {}), **(gateway_env or {}), "EDUAIQ_FAULTS_RUN": run}
    try:
        with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp, mutate=mutate, upstream_args=upstream,
                           consumer=True, gateways=gateways, extra_env=env) as stack:  # fmt: skip
            org = yaml.safe_load((tmp / f"{stack.institution}.yaml").read_text())
            fs = FaultStack(stack, tmp, served, org)
            try:
                yield fs
            finally:
                for log in stack.logs:
                    if log.exists():
                        print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-1500:]}")
    finally:
        _kill_orphans(run)


def _kill_orphans(run: str) -> None:
    """Processes of this run that outlived their parent (a SIGKILLed gateway cannot stop its sidecar)."""
    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info["environ"] or {}).get("EDUAIQ_FAULTS_RUN") == run:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
