"""Budgets at the gateway: clamp, refuse with a sentence a student understands, and never overspend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.harness import Stack, gateway_stack, metric_samples

PROMPT = [{"role": "user", "content": "Explain recursion briefly."}]


def _tight(doc: dict[str, Any]) -> None:
    """Each CS101 member may use 300 tokens a month: a few requests, then a refusal."""
    cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
    assert cs101["id"] == "cs101"
    cs101["member_cap"] = {"cost": {"fixed": 5}, "tokens": {"fixed": 300}}


@pytest.fixture(scope="module")
def tight(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(
        pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("tight"), mutate=_tight
    ) as s:
        yield s


def _post(stack: Stack, who: str, **body: Any) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {stack.key(who)}"},
                      json={"model": "demo-chat", "messages": PROMPT, **body})  # fmt: skip


def _me(stack: Stack, who: str) -> dict[str, Any]:
    r = httpx.get(stack.base_url + "/v1/me", headers={"Authorization": f"Bearer {stack.key(who)}"})
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def test_clamp_then_refuse_with_a_readable_429(tight: Stack) -> None:
    # GPT4All never sends max_tokens: the model's limit (1024) does not fit in 300 tokens, so it is clamped.
    first = _post(tight, "alice")
    assert first.status_code == 200, first.text
    clamp = first.headers["x-eduaiq-max-tokens-clamped"]
    asked, granted = (int(x) for x in clamp.split("->"))
    assert asked == 1024 and 16 <= granted < 300
    assert first.json()["usage"]["completion_tokens"] <= granted
    assert int(first.headers["x-eduaiq-budget-remaining-tokens"]) <= 300

    refused = None
    for _ in range(60):
        r = _post(tight, "alice")
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 200, r.text
    assert refused is not None, "the member cap never ran out"
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert error["message"].startswith(
        "Your personal token allowance in CS101 Introduction to Programming has run out"
    )
    assert "It resets on" in error["message"] and "America/Chicago" in error["message"]
    assert refused.headers["x-should-retry"] == "false"
    assert refused.headers["x-eduaiq-binding-unit"] == "cs101"
    samples = metric_samples(tight.base_url)  # Prometheus sees the refusal, by reason
    assert samples[("eduaiq_refusals_total", (("reason", "insufficient_quota"),))] >= 1
    assert samples[("eduaiq_requests_total", (("endpoint", "chat"), ("status", "429")))] >= 1

    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(
            base_url=tight.base_url + "/v1", api_key=tight.key("alice"), max_retries=0
        ).chat.completions.create(
            model="demo-chat",
            messages=PROMPT,  # type: ignore[arg-type]
        )
    # A stream is refused before any byte: a plain 429, not an error inside a started stream.
    stream = _post(tight, "alice", stream=True)
    assert stream.status_code == 429 and stream.headers["content-type"].startswith("application/json")
    # Bob's own allowance in the same course is untouched.
    assert _post(tight, "bob").status_code == 200


def test_member_spend_never_exceeds_its_cap(tight: Stack) -> None:
    for _ in range(5):
        _post(tight, "bob")
    me = _me(tight, "bob")
    member = me["budget"]["nodes"][0]
    tokens = member["metrics"]["tokens"]
    assert tokens["cap"] == 300
    assert tokens["used"] + tokens["reserved"] <= 300
    assert tokens["reserved"] == 0  # every request settled
