"""Rate, token and concurrency limits and contract ceilings through real gateway processes.

Two gateways share one Redis: a limit is checked in the same script run as the budget reservation, so no
number of replicas admits more than it allows. Refusals are OpenAI's 429s, and the OpenAI SDK's own retry
logic follows their headers.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psycopg2
import pytest

from gateway.estimate import chat_prompt_bound
from tests.gateway.harness import Stack, gateway_stack

GO_DURATION = re.compile(r"^\d+ms$|^\d+(\.\d+)?s$|^\d+m\d+(\.\d+)?s$")
TRIOS = [f"x-ratelimit-{w}-{u}" for u in ("requests", "tokens") for w in ("limit", "remaining", "reset")]
TPM = 20_000
CONTRACT_MICRO = 20_000  # USD 0.02: 200 requests of 100 tokens at 1 micro-unit a token
MAX_TOKENS = 100


def _units(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    teaching = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"]
    cs101, research = teaching[0]["children"][0], teaching[1]
    assert cs101["id"] == "cs101" and research["id"] == "turing-research"
    return cs101, research


def _limited(doc: dict[str, Any]) -> None:
    """Each CS101 member: 20 requests a minute, and 800 tokens. Research: one request at a time."""
    cs101, research = _units(doc)
    cs101["member_limits"] = {"requests_per_minute": 20, "tokens_per_minute": 800_000}
    research["limits"] = {"concurrent": 1, "tokens_per_minute": 4_000}


@pytest.fixture(scope="module")
def limited(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("lim"), mutate=_limited,
                       gateways=2, upstream_args=("--chunk-delay-ms", "200", "--reply-tokens", "20")) as s:  # fmt: skip
        yield s


def _body(i: int, max_tokens: int = 16, stream: bool = False) -> dict[str, Any]:
    return {"model": "demo-chat", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": f"request {i}"}]}  # fmt: skip


async def _storm(stack: Stack, bodies: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    """Every request at once, alternating the gateways; streams are read to the end."""
    urls = stack.env["GATEWAY_URLS"].split(",")
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:
        start = asyncio.Event()

        async def one(i: int, who: str, body: dict[str, Any]) -> httpx.Response:
            await start.wait()
            r = await client.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {stack.key(who)}"})  # fmt: skip
            return r

        tasks = [asyncio.create_task(one(i, who, body)) for i, (who, body) in enumerate(bodies)]
        await asyncio.sleep(0.2)
        start.set()
        return await asyncio.gather(*tasks)


def test_member_limit_admits_exactly_20_of_1000_across_two_gateways(limited: Stack) -> None:
    responses = asyncio.run(_storm(limited, [("alice", _body(i)) for i in range(1000)]))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 20, 429: 980}, statuses
    for r in responses:
        if r.status_code == 429:
            assert (
                r.json()["error"]["code"] == "rate_limit_exceeded" and r.json()["error"]["type"] == "requests"
            )
            assert int(r.headers["retry-after"]) >= 1 and int(r.headers["retry-after-ms"]) >= 1
            assert r.headers["x-should-retry"] == "true"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert r.json()["error"]["message"].startswith(
                "Rate limit reached: your personal limit in CS101 Introduction to Programming is 20 requests "
                "per minute. Please try again in "
            )
    left = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200)
    assert left == list(range(20))  # each admission saw the one before it, whichever gateway took it


def test_headers_on_every_answer(limited: Stack) -> None:
    """Served, streamed and refused answers of a limited path carry the six headers, in OpenAI's format."""
    client = openai.OpenAI(base_url=limited.base_url + "/v1", api_key=limited.key("bob"), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**_body(0))
    assert raw.http_response.status_code == 200
    for name in TRIOS:
        assert name in raw.headers, name
    assert (
        raw.headers["x-ratelimit-limit-requests"] == "20"
        and raw.headers["x-ratelimit-limit-tokens"] == "800000"
    )
    assert GO_DURATION.match(raw.headers["x-ratelimit-reset-requests"])
    assert GO_DURATION.match(raw.headers["x-ratelimit-reset-tokens"])
    with client.chat.completions.with_streaming_response.create(**_body(1, stream=True)) as streamed:
        assert all(name in streamed.headers for name in TRIOS)
        assert int(streamed.headers["x-ratelimit-remaining-requests"]) == 18
        for _ in streamed.iter_lines():
            pass
    rest = [httpx.post(limited.base_url + "/v1/chat/completions", json=_body(i), timeout=30,
                       headers={"Authorization": f"Bearer {limited.key('bob')}"}) for i in range(19)]  # fmt: skip
    refused = rest[-1]
    assert refused.status_code == 429
    assert all(name in refused.headers for name in TRIOS[:3])
    assert GO_DURATION.match(refused.headers["x-ratelimit-reset-requests"])


def test_openai_sdk_waits_for_retry_after_and_succeeds(limited: Stack) -> None:
    """Research may run one request at a time: while a stream is open the next is refused with retry-after-ms;
    the SDK sleeps that long by itself and its retry, once the stream is closed, is served."""
    statuses: list[int] = []
    first_429 = threading.Event()

    def hook(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert "retry-after-ms" in response.headers
            first_429.set()

    holder = httpx.Client(timeout=60)
    hold = holder.stream("POST", limited.base_url + "/v1/chat/completions", json=_body(0, stream=True),
                         headers={"Authorization": f"Bearer {limited.key('rita')}"})  # fmt: skip
    held = hold.__enter__()
    assert held.status_code == 200

    def close_after_first_refusal() -> None:
        first_429.wait(60)
        hold.__exit__(None, None, None)
        holder.close()

    closer = threading.Thread(target=close_after_first_refusal)
    closer.start()
    sdk = openai.OpenAI(base_url=limited.base_url + "/v1", api_key=limited.key("rita"), max_retries=3,
                        http_client=httpx.Client(timeout=60, event_hooks={"response": [hook]}))  # fmt: skip
    answer = sdk.chat.completions.create(**_body(1))
    closer.join()
    assert answer.choices[0].message.content
    assert statuses[0] == 429 and statuses[-1] == 200, statuses


def test_sdk_does_not_retry_a_request_that_can_never_fit(limited: Stack) -> None:
    """Research allows 4,000 tokens a minute: a prompt whose bound alone is above that can never be served
    (a smaller max_tokens would only be clamped), so it is refused and not retried."""
    attempts: list[httpx.Response] = []
    sdk = openai.OpenAI(base_url=limited.base_url + "/v1", api_key=limited.key("rita"), max_retries=3,
                        http_client=httpx.Client(timeout=60, event_hooks={"response": [attempts.append]}))  # fmt: skip
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="demo-chat", max_tokens=16,
                                    messages=[{"role": "user", "content": "word " * 1_000}])  # fmt: skip
    assert len(attempts) == 1 and attempts[0].headers["x-should-retry"] == "false"
    assert "retry-after" not in attempts[0].headers
    assert caught.value.code == "rate_limit_exceeded"
    assert "ask for fewer max_tokens" in caught.value.message


# ---- tokens per minute under streams and non-streams ------------------------------------------------------


def _tpm(doc: dict[str, Any]) -> None:
    cs101, _ = _units(doc)
    cs101["limits"] = {"tokens_per_minute": TPM}


@pytest.fixture(scope="module")
def slow_tpm(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # Nothing settles before every admission of the storm is decided: the model answers after 20 s.
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("tpm"), mutate=_tpm,
                       gateways=2, upstream_args=("--latency-ms", "20000", "--chunk-delay-ms", "1000",
                                                  "--reply-tokens", "3")) as s:  # fmt: skip
        yield s


def test_tokens_per_minute_never_admits_more_than_the_limit(slow_tpm: Stack) -> None:
    rng = random.Random(19)
    bodies = [
        ("alice" if i % 2 else "bob", _body(i, rng.randint(50, 2000), stream=i % 4 < 2)) for i in range(400)
    ]
    responses = asyncio.run(_storm(slow_tpm, bodies))
    counted, largest = 0, 0
    for (_, body), r in zip(bodies, responses, strict=True):
        bound = chat_prompt_bound(body) + body["max_tokens"]
        largest = max(largest, bound)
        if r.status_code == 200:
            clamp = r.headers.get("x-eduaiq-max-tokens-clamped")
            granted = int(clamp.split("->")[1]) if clamp else body["max_tokens"]
            counted += chat_prompt_bound(body) + granted
        else:
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
            assert r.json()["error"]["type"] == "tokens"
    assert counted <= TPM
    assert counted > TPM - largest  # and the limit was used, not refused wholesale
    assert any(
        r.headers.get("x-ratelimit-limit-tokens") == str(TPM) for r in responses if r.status_code == 200
    )


# ---- contract ceiling ---------------------------------------------------------------------------------------


def _contract(doc: dict[str, Any]) -> None:
    doc["providers"][0]["models"][0]["price"] = {"input_per_mtok": 0, "output_per_mtok": 1}  # 1 micro a token
    doc["providers"][0]["contract"] = {"cost": CONTRACT_MICRO / 1_000_000, "period": "month"}
    cs101, research = _units(doc)
    cs101["budget"] = {"cost": {"fixed": 1}}
    cs101["member_cap"] = {"cost": {"fixed": 1}}
    research["budget"] = {"cost": {"fixed": 1}}


@pytest.fixture(scope="module")
def contract(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("con"), mutate=_contract,
                       gateways=2, consumer=True, upstream_args=("--reply-tokens", "1000")) as s:  # fmt: skip
        yield s


def test_contract_ceiling_is_never_passed_while_units_stay_within_budget(contract: Stack) -> None:
    who = ("alice", "bob", "rita")
    bodies = [(who[i % 3], _body(i, MAX_TOKENS, stream=i % 2 == 0)) for i in range(600)]
    responses = asyncio.run(_storm(contract, bodies))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    for r in responses:
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["code"] == "insufficient_quota" and r.headers["x-should-retry"] == "false", error
            assert error["message"].startswith(
                "Demo University's contract with demo is fully committed for this"
            )
    rows = _ledger(contract, len(responses))
    total = sum(cost for status, cost in rows if status != "refused")
    assert total <= CONTRACT_MICRO
    assert total > CONTRACT_MICRO - MAX_TOKENS  # it was spent up to the ceiling, each unit within its budget
    check = contract.cli("quota", "check", "-i", contract.institution)
    assert check.returncode == 0, check.stdout + check.stderr


def _ledger(stack: Stack, expected: int, timeout: float = 90) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        conn = psycopg2.connect(stack.db_url)
        with conn.cursor() as cur:
            cur.execute(
                "select status, cost_micro from usage_event where institution_id = %s", (stack.institution,)
            )
            rows = [(str(s), int(c)) for s, c in cur.fetchall()]
        conn.close()
        if len(rows) >= expected or time.monotonic() > deadline:
            assert len(rows) == expected, (len(rows), expected)
            return rows
        time.sleep(0.5)
