"""Two gateway processes and two usage consumers on one Redis, PostgreSQL and broker: 1000 concurrent
requests, a course budget that fits exactly N of them, every event in the ledger exactly once.

Input is priced at 0 and the upstream always writes exactly `max_tokens`, so a
request's actual cost equals what it reserves: the budget fits exactly 50 full
requests plus one clamped to the 50 tokens left, and nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg2
import pytest

from tests.gateway.harness import Stack, gateway_stack

MAX_TOKENS = 100
FULL = 50
LEFTOVER = 50  # tokens of budget after the 50 full requests: one request is clamped to it


def _exact(doc: dict[str, Any]) -> None:
    doc["providers"][0]["models"][0]["price"] = {
        "input_per_mtok": 0,
        "output_per_mtok": 1,
    }  # 1 micro-unit a token
    cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
    cs101["budget"] = {"cost": {"fixed": (FULL * MAX_TOKENS + LEFTOVER) / 1_000_000}}
    del cs101["member_cap"]


@pytest.fixture(scope="module")
def two(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("conc"), mutate=_exact,
                       gateways=2, consumer=True, consumers=2, upstream_args=("--reply-tokens", "1000")) as s:  # fmt: skip
        yield s


async def _storm(stack: Stack, n: int) -> list[httpx.Response]:
    urls = stack.env["GATEWAY_URLS"].split(",")
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = asyncio.Event()

        async def one(i: int) -> httpx.Response:
            await start.wait()
            who = "alice" if i % 2 else "bob"
            return await client.post(f"{urls[i % len(urls)]}/v1/chat/completions",
                                     headers={"Authorization": f"Bearer {stack.key(who)}"},
                                     json={"model": "demo-chat", "max_tokens": MAX_TOKENS,
                                           "messages": [{"role": "user", "content": f"request {i}"}]})  # fmt: skip

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(0.2)
        start.set()
        return await asyncio.gather(*tasks)


def test_exactly_n_served_in_full_and_no_cap_exceeded(two: Stack) -> None:
    responses = asyncio.run(_storm(two, 1000))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    served = [r for r in responses if r.status_code == 200]
    clamped = [r for r in served if "x-eduaiq-max-tokens-clamped" in r.headers]
    full = [r for r in served if r not in clamped]
    assert len(full) == FULL
    assert (
        len(clamped) == 1 and clamped[0].headers["x-eduaiq-max-tokens-clamped"] == f"{MAX_TOKENS}->{LEFTOVER}"
    )
    charged = sum(r.json()["usage"]["completion_tokens"] for r in served)  # 1 micro-unit per token
    assert charged == FULL * MAX_TOKENS + LEFTOVER
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "insufficient_quota"

    me = httpx.get(two.base_url + "/v1/me", headers={"Authorization": f"Bearer {two.key('alice')}"}).json()
    for node in me["budget"]["nodes"]:
        cost = node["metrics"]["cost"]
        assert cost["reserved"] == 0
        if cost["cap"] is not None:
            assert cost["used"] <= cost["cap"], node
    course = next(n for n in me["budget"]["nodes"] if n["unit"] == "cs101" and n["kind"] != "member")
    assert course["metrics"]["cost"]["used"] == charged  # the counters equal the sum of the charges

    events = _ledger(two, len(responses))  # exactly one row per request (the event id is the key)
    assert events["ok"] == FULL and events["clamped"] == 1 and events["refused"] == len(responses) - FULL - 1
    assert events["cost"] == charged


def _ledger(stack: Stack, expected: int, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        conn = psycopg2.connect(stack.db_url)
        with conn.cursor() as cur:
            cur.execute("select status, count(*), sum(cost_micro) from usage_event where institution_id=%s group by status",
                        (stack.institution,))  # fmt: skip
            rows = cur.fetchall()
        conn.close()
        out = {status: count for status, count, _ in rows}
        out["cost"] = sum(int(c or 0) for _, _, c in rows)
        if sum(count for _, count, _ in rows) >= expected or time.monotonic() > deadline:
            assert sum(count for _, count, _ in rows) == expected, out
            return out
        time.sleep(0.5)
