#!/usr/bin/env python3
"""What each stage of the gateway costs at concurrency 64, measured by leaving it out.

    python bench/stages.py [--rounds 3] [--requests 6000] [--variants gateway,+limits] [--out stages.json]

Starts the same servers, mock upstream and institution as bench/gateway.py, then five
gateways on the same code, side by side:

  proxy       the HTTP server and upstream pool alone (gateway/server.py, providers/http.py):
              read the request, send it to the mock, send the answer back. No auth, no JSON.
  core        the gateway with budgets and metering left out: auth, parsing, estimates,
              policy, routing, headers, metrics.
  +budget     core, plus the budget engine (reserve before, settle after: Redis).
  +metering   core, plus the usage events (the sidecar process and the Kafka broker).
  gateway     everything, as `eduaiq gateway` runs it.
  +limits     gateway, for a key whose path has rate, token and concurrency limits on every node and
              two contract ceilings (bench/stack.py `KEY_LIMITED`, never binding): `+limits` minus
              `gateway` is what checking limits costs.

"Left out" is done here, in this benchmark's own process, by replacing the stage's function
(`gateway.budget.reserve` answers every request with the first reservation it made,
`gateway.budget.settle` and `Runtime._emit` do nothing); nothing in the gateway can
switch a stage off. Each round drives every variant in turn with bench/load.py, each time
right after a direct run against the mock, and reads the CPU time of the gateway process
(with its sidecar), Redis, the broker and the mock before and after. It prints the medians:
requests per second, the ratio to direct, and CPU microseconds per request of each process.
Nothing here asserts a number: it measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import KEY, KEY_LIMITED, Stack, load

VARIANTS = ("proxy", "core", "+budget", "+metering", "gateway", "+limits")


def key_for(variant: str) -> str:
    """+limits drives the institution whose key has limits on every node of its path; the rest, the plain one."""
    return KEY_LIMITED if variant == "+limits" else KEY


# -- the variants' processes ---------------------------------------------------------------------


def _proxy_app(upstream: str) -> Callable[..., Any]:
    """The floor of any gateway built on these parts: bytes in, bytes to the upstream, bytes back."""
    from providers.http import UpstreamPool

    pool = UpstreamPool()
    url = upstream.rstrip("/") + "/chat/completions"
    headers = [("content-type", "application/json")]

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = await pool.request("POST", url, headers, body)
        data = await answer.read()
        answer.release()
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": data})

    return app


def _leave_out(budget: bool, metering: bool) -> None:
    import gateway.budget
    import gateway.runtime
    from quota import Reservation

    if budget:
        reserve = gateway.budget.reserve
        first: list[Reservation] = []

        async def reserve_once(*args: Any, **kwargs: Any) -> Reservation:
            if not first:
                first.append(await reserve(*args, **kwargs))
            return first[0]

        async def no_settle(*args: Any, **kwargs: Any) -> Any:
            return SimpleNamespace(status="settled")  # what gateway/accounting.py reads of a Settlement

        gateway.budget.reserve = reserve_once  # type: ignore[assignment]
        gateway.budget.settle = no_settle  # type: ignore[assignment]
    if metering:  # the one place a usage event leaves the gateway (gateway/accounting.py records through it)
        gateway.runtime.Runtime._emit = lambda self, o, event_id: None  # type: ignore[method-assign]


def serve(variant: str, port: int, upstream: str) -> None:
    import logging

    from core.settings import get_settings
    from gateway.app import create_app
    from gateway.server import run

    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    if variant == "proxy":
        run(lambda: _proxy_app(upstream), "127.0.0.1", port, max_body=settings.max_body_bytes)  # type: ignore[arg-type, return-value]
        return
    _leave_out(budget=variant in ("core", "+metering"), metering=variant in ("core", "+budget"))
    run(lambda: create_app(settings), "127.0.0.1", port, max_body=settings.max_body_bytes)


# -- measuring -----------------------------------------------------------------------------------


def _listener(port: int) -> Any:
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def _cpu(procs: list[Any]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except Exception:  # a process that is gone has no more CPU to report
            pass
    return total


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=6000, help="requests per run, at concurrency 64")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset to run (e.g. gateway,+limits: more rounds of one difference in the same time)",
    )
    ap.add_argument("--out", help="write the JSON summary here too")
    ap.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.serve:
        serve(opts.serve, opts.port, opts.upstream)
        return

    import psutil

    from cli.services.process import free_port, wait_for_port

    chosen = [v for v in VARIANTS if v in opts.variants.split(",")]
    if unknown := set(opts.variants.split(",")) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    with tempfile.TemporaryDirectory(prefix="eduaiq-stages-") as tmpdir:
        stack = Stack(Path(tmpdir))
        try:
            upstream = stack.start()
            gateways: dict[str, tuple[str, Any]] = {}
            for variant in chosen:
                port = free_port()
                proc = stack.spawn([sys.executable, __file__, "--serve", variant, "--port", str(port),
                                    "--upstream", upstream], f"{variant}.log")  # fmt: skip
                wait_for_port("127.0.0.1", port, 60)
                gateways[variant] = (f"http://127.0.0.1:{port}/v1", psutil.Process(proc.pid))
            others = {
                "redis": _listener(_port(stack.env["EDUAIQ_REDIS_URL"])),
                "broker": _listener(_port("x:" + stack.env["EDUAIQ_KAFKA_BOOTSTRAP"])),
                "mock": _listener(_port(upstream)),
            }
            time.sleep(1)
            for variant, (url, _) in gateways.items():  # warm: connections, caches, the first reservation
                load(url, key_for(variant), "-n", "1000", "-c", "64")
            n = opts.requests
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in chosen}
            for r in range(opts.rounds):
                for variant, (url, proc) in gateways.items():
                    direct = load(upstream, "", "-n", str(n), "-c", "64", "--warmup", "200")
                    procs = {"gateway": [proc, *proc.children(recursive=True)],
                             **{k: [p] for k, p in others.items() if p is not None}}  # fmt: skip
                    before = {k: _cpu(p) for k, p in procs.items()}
                    through = load(url, key_for(variant), "-n", str(n), "-c", "64")
                    after = {k: _cpu(p) for k, p in procs.items()}
                    errors = sum(v for k, v in (through.get("status_counts") or {}).items() if k != "200")
                    run = {
                        "direct_rps": direct["throughput_rps"],
                        "rps": through["throughput_rps"],
                        "ratio": through["throughput_rps"] / direct["throughput_rps"],
                        "errors": errors,
                        **{f"{k}_us": (after[k] - before[k]) * 1e6 / n for k in procs},
                    }
                    runs[variant].append(run)
                    print(json.dumps({"round": r + 1, "variant": variant, **run}), flush=True)
            summary = {
                v: {k: round(statistics.median(x[k] for x in rs), 3) for k in rs[0]} for v, rs in runs.items()
            }
            if opts.out:
                Path(opts.out).write_text(json.dumps({"medians": summary, "runs": runs}, indent=2))
            print(table(summary))
        finally:
            stack.close()


def table(summary: dict[str, dict[str, float]]) -> str:
    cols = ["gateway_us", "redis_us", "broker_us", "mock_us"]
    lines = [
        "",
        f"{'variant':10} {'req/s':>7} {'direct':>7} {'ratio':>6}  " + " ".join(f"{c:>11}" for c in cols),
    ]
    for variant, s in summary.items():
        lines.append(
            f"{variant:10} {s['rps']:>7.0f} {s['direct_rps']:>7.0f} {s['ratio']:>6.2f}  "
            + " ".join(f"{s.get(c, 0):>11.0f}" for c in cols)
            + ("" if not s["errors"] else f"  errors {s['errors']:.0f}")
        )
    lines.append("(CPU µs per request; gateway_us includes its usage sidecar)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
