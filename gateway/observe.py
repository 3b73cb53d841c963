"""Health, readiness and Prometheus metrics for the gateway.

`/readyz` fails when Redis cannot be reached (no budget can be reserved
without it) or when the usage pipeline can take no more events (the broker is
unavailable and the spool refuses, or the usage sidecar is stuck: the same
condition in which /v1 answers 503, usage/sidecar.py). PostgreSQL being away
does not fail it: the hot path does not read PostgreSQL (keys are cached,
institutions compiled, the ledger is written by the consumer), so a database
restart must not take every replica out of service; it is reported as
`degraded` in the body. A broker outage alone does not fail it either: events
go to the durable spool and are replayed later; it is reported as `spooling`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
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
    # The usage pipeline's state, set at each scrape: 1 while billable requests are refused (503).
    usage_refusing: Gauge
    usage_held_bytes: Gauge
    usage_pending: Gauge
    usage_spool_bytes: Gauge
    usage_sidecar_restarts: Gauge
    # Limits and fair queues: refusals by what refused (requests, tokens, concurrent, contract, queue_timeout,
    # queue_full), and the time requests waited for a slot of a queued model (outcome granted|timeout|full|gone).
    limit_refusals: Counter
    queue_wait: Histogram
    queue_waiting: Gauge
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

    def limit_refused(self, what: str) -> None:
        self._child(self.limit_refusals, what).inc()

    def queue_waited(self, model: str, outcome: str, seconds: float) -> None:
        self._child(self.queue_wait, model, outcome).observe(seconds)

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
        usage_refusing=Gauge("eduaiq_usage_refusing", "1 while usage cannot be recorded and /v1 answers 503",
                             registry=reg),
        usage_held_bytes=Gauge("eduaiq_usage_held_bytes", "Usage lines the sidecar has not taken yet",
                               registry=reg),
        usage_pending=Gauge("eduaiq_usage_pending_events", "Usage events not yet with Kafka or the spool",
                            registry=reg),
        usage_spool_bytes=Gauge("eduaiq_usage_spool_bytes", "Bytes in the usage spool", registry=reg),
        usage_sidecar_restarts=Gauge("eduaiq_usage_sidecar_restarts", "Usage sidecar restarts", registry=reg),
        limit_refusals=Counter("eduaiq_limit_refusals", "Requests refused by a rate, token, concurrency or "
                               "contract limit, or by a full or timed-out fair queue", ["what"], registry=reg),
        queue_wait=Histogram("eduaiq_queue_wait_seconds", "Time a request waited for a slot of a queued model",
                             ["model", "outcome"], registry=reg,
                             buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)),
        queue_waiting=Gauge("eduaiq_queue_waiting", "Requests of this process waiting for a slot", ["model"],
                            registry=reg),
    )  # fmt: skip


METRICS = _make()


async def metrics(request: Request) -> Response:
    producer = getattr(request.app.state.runtime, "producer", None)
    if producer is not None:
        stats = producer.stats()
        METRICS.usage_refusing.set(0 if producer.admitting else 1)
        METRICS.usage_held_bytes.set(producer.held_bytes())
        METRICS.usage_pending.set(stats.pending)
        METRICS.usage_spool_bytes.set(stats.spool_bytes)
        METRICS.usage_sidecar_restarts.set(producer.restarts)
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    rt = request.app.state.runtime
    checks: dict[str, str] = {}
    started = time.perf_counter()

    async def redis_check() -> None:
        await asyncio.wait_for(rt.redis.ping(), 2)

    async def pg_probe() -> None:
        async with rt.db.connect() as conn:
            await conn.execute(text("select 1"))

    async def pg_check() -> None:  # the connect too: a restarting server can hold it for long
        await asyncio.wait_for(pg_probe(), 2)

    for name, check in (("redis", redis_check), ("postgres", pg_check)):
        try:
            await check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"down: {type(exc).__name__}"
    if checks["postgres"] != "ok":
        checks["postgres"] = "degraded: " + checks["postgres"]  # not on the hot path: see the module's note
    metering = rt.producer is None or rt.producer.admitting
    if rt.producer is not None:
        checks["broker"] = rt.producer.state()  # the usage pipeline: sidecar, broker, spool
    ready = checks.get("redis") == "ok" and metering
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "ms": round((time.perf_counter() - started) * 1000, 1)}  # fmt: skip
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")
