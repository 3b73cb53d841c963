"""/healthz, /readyz and /metrics: what an operator's probes and Prometheus read from a gateway."""

from __future__ import annotations

import time

import httpx

from tests.gateway.harness import Stack, metric_samples
from tests.gateway.test_openai_sdk import HELLO


def _chat(stack: Stack, model: str = "demo-chat") -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {stack.key('bob')}"},
                      json={"model": model, "messages": HELLO, "max_tokens": 8})  # fmt: skip


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


def test_health_and_readiness_name_each_dependency(stack: Stack) -> None:
    health = httpx.get(stack.base_url + "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    deadline = time.monotonic() + 10  # the broker check is the producer's last report (twice a second)
    while True:
        ready = httpx.get(stack.base_url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        if ready.json()["checks"]["broker"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ready.json()["checks"] == {"redis": "ok", "postgres": "ok", "broker": "ok"}


def test_metrics_count_requests_latency_tokens_and_upstream_errors(stack: Stack) -> None:
    before = metric_samples(stack.base_url)
    ok = _chat(stack)
    assert ok.status_code == 200, ok.text
    usage = ok.json()["usage"]
    assert _chat(stack, "gpt-9-ultra").status_code == 404
    admin = stack.upstream_url.removesuffix("/v1") + "/demo/admin"
    httpx.post(admin, json={"fail": {"status": 500, "mode": "status", "count": 1}}).raise_for_status()
    failed = _chat(stack)
    assert failed.status_code == 502
    reason = failed.json()["error"]["code"]  # the reason Prometheus gets is the code the client got

    # Tokens are counted when the request is settled, just after its answer went out.
    deadline = time.monotonic() + 10
    while True:
        after = metric_samples(stack.base_url)
        grown = _value(after, "eduaiq_tokens_total", direction="output") - _value(
            before, "eduaiq_tokens_total", direction="output"
        )
        if grown >= usage["completion_tokens"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("eduaiq_requests_total", endpoint="chat", status="200") == 1
    assert delta("eduaiq_requests_total", endpoint="chat", status="404") == 1
    assert delta("eduaiq_requests_total", endpoint="chat", status="502") == 1
    assert delta("eduaiq_upstream_errors_total", reason=reason) == 1
    assert delta("eduaiq_request_seconds_count", endpoint="chat") == 3
    assert delta("eduaiq_request_seconds_sum", endpoint="chat") > 0
    assert delta("eduaiq_request_seconds_bucket", endpoint="chat", le="+Inf") == 3
    assert delta("eduaiq_tokens_total", direction="input") == usage["prompt_tokens"]
    assert delta("eduaiq_tokens_total", direction="output") == usage["completion_tokens"]
