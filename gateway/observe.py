"""Health, readiness and Prometheus metrics for the gateway.

`/readyz` fails when Redis or PostgreSQL cannot be reached (the gateway
cannot budget or authenticate without them). A broker outage does not fail
it: usage events then go to the durable spool and are replayed later, so the
replica keeps serving; readiness reports `spooling` so operators see it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response


@dataclass
class _Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    tokens: Counter
    refusals: Counter
    upstream_errors: Counter
    # Labelled children, looked up once: `labels()` builds and hashes its key tuple every call, a
    # measurable share of a request's CPU when taken three or four times per request.
    _children: dict[tuple[object, ...], Any] = field(default_factory=dict)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count(self, endpoint: str, status: int, code: str | None) -> None:
        self._child(self.requests, endpoint, str(status)).inc()
        if status == 429:
            self._child(self.refusals, code or "rate_limit").inc()
        elif status >= 500:
            self._child(self.upstream_errors, code or "error").inc()

    def timed(self, endpoint: str, seconds: float) -> None:
        """Time from the request's arrival to its response start (a stream's first byte from the model)."""
        self._child(self.latency, endpoint).observe(seconds)

    def settled(self, input_tokens: int, output_tokens: int) -> None:
        self._child(self.tokens, "input").inc(input_tokens)
        self._child(self.tokens, "output").inc(output_tokens)


def _make() -> _Metrics:
    reg = CollectorRegistry()
    return _Metrics(
        registry=reg,
        requests=Counter("eduaiq_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=reg),
        latency=Histogram("eduaiq_request_seconds", "Time to response start", ["endpoint"], registry=reg,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
        tokens=Counter("eduaiq_tokens", "Tokens settled", ["direction"], registry=reg),
        refusals=Counter("eduaiq_refusals", "Requests refused (budget or rate)", ["reason"], registry=reg),
        upstream_errors=Counter("eduaiq_upstream_errors", "Upstream failures", ["reason"], registry=reg),
    )  # fmt: skip


METRICS = _make()


async def metrics(request: Request) -> Response:
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    rt = request.app.state.runtime
    checks: dict[str, str] = {}
    started = time.perf_counter()

    async def redis_check() -> None:
        await asyncio.wait_for(rt.redis.ping(), 2)

    async def pg_check() -> None:
        async with rt.db.connect() as conn:
            await asyncio.wait_for(conn.execute(text("select 1")), 2)

    for name, check in (("redis", redis_check), ("postgres", pg_check)):
        try:
            await check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"down: {type(exc).__name__}"
    if rt.producer is not None:
        stats = rt.producer.stats()
        checks["broker"] = "ok" if stats.direct else f"spooling ({stats.pending} pending)"
    ready = checks.get("redis") == "ok" and checks.get("postgres") == "ok"
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "ms": round((time.perf_counter() - started) * 1000, 1)}  # fmt: skip
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")
