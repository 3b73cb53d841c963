"""Limits under faults, through real gateway processes: a SIGKILLed gateway's concurrency leases and model
slots come back within one lease (its hold is still billed at expiry, as budgets are), the x-ratelimit-*
headers are on every answer of a limited path and on none of an institution without limits, and a refusal
(rate limit or contract ceiling) costs nothing: no charge in the ledger, no hold in the counters.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
import redis

from quota import keys
from tests.gateway.harness import Stack, gateway_stack

RATE_HEADERS = [
    f"x-ratelimit-{w}-{u}" for u in ("requests", "tokens") for w in ("limit", "remaining", "reset")
]
CONTRACT_MICRO = 500  # at 1 micro-unit an output token, free input


def _cs101(doc: dict[str, Any]) -> dict[str, Any]:
    unit = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
    assert unit["id"] == "cs101"
    return unit  # type: ignore[no-any-return]


def _per_token(doc: dict[str, Any]) -> None:
    doc["providers"][0]["models"][0]["price"] = {"input_per_mtok": 0, "output_per_mtok": 1}


def _chat(
    base: str, key: str, max_tokens: int = 20, stream: bool = False, text: str = "hi"
) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                      json={"model": "demo-chat", "max_tokens": max_tokens, "stream": stream,
                            "messages": [{"role": "user", "content": text}]})  # fmt: skip


def _rows(db_url: str, institution: str) -> list[tuple[str, str, int, int, Any]]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("select status, user_id, cost_micro, overage_micro, funding from usage_event"
                    " where institution_id = %s", (institution,))  # fmt: skip
        return [(str(s), str(u), int(c), int(o), f) for s, u, c, o, f in cur.fetchall()]


def _wait_rows(
    stack: Stack, expected: dict[str, int], timeout: float = 90
) -> list[tuple[str, str, int, int, Any]]:
    """The ledger rows of the users in `expected`, once each has that many."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [row for row in _rows(stack.db_url, stack.institution) if row[1] in expected]
        counts = {who: sum(1 for row in rows if row[1] == who) for who in expected}
        if counts == expected or time.monotonic() > deadline:
            assert counts == expected, rows
            return rows
        time.sleep(0.5)


def _reserved(stack: Stack, who: str) -> dict[str, int]:
    """`reserved` of every node on the member's path (cost), as /v1/me reports it."""
    me = httpx.get(stack.base_url + "/v1/me", headers={"Authorization": f"Bearer {stack.key(who)}"},
                   timeout=30).json()  # fmt: skip
    return {f"{n['kind']}:{n['unit']}": n["metrics"]["cost"]["reserved"] for n in me["budget"]["nodes"]}


# ---- 1. a SIGKILLed gateway's concurrency lease and slot ----------------------------------------------------


def _one_at_a_time(doc: dict[str, Any]) -> None:
    """Each CS101 member one request at a time; the model one slot; a busy slot refuses after 1 s."""
    _per_token(doc)
    doc["providers"][0]["models"][0].update(slots=1, queue={"max_wait_seconds": 1, "retry_after_seconds": 1})
    cs101 = _cs101(doc)
    cs101["member_limits"] = {"concurrent": 1}
    del cs101["member_cap"]


def test_sigkilled_gateways_concurrency_lease_and_slot_return_within_one_lease(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Alice's stream on gateway A holds her one concurrent request and the model's one slot. A is SIGKILLed:
    nobody renews them, so both lapse after the 3 s lease and gateway B serves Alice again, while A's hold
    (TTL 30 s) is still in Redis: the lease, not the hold's expiry, freed them. The hold is then billed at
    expiry as any dead gateway's hold is: an `unsettled` ledger row at its bound."""
    env = {"EDUAIQ_LIMIT_LEASE_SECONDS": "3", "EDUAIQ_RESERVATION_TTL_SECONDS": "30"}
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, mutate=_one_at_a_time, gateways=2,
                       consumer=True, upstream_args=("--chunk-delay-ms", "200", "--reply-tokens", "500"),
                       extra_env=env) as stack:  # fmt: skip
        gw_a, gw_b = stack.env["GATEWAY_URLS"].split(",")
        doomed = stack.procs[1]  # procs: upstream, gateway A, gateway B, consumer
        r = redis.Redis.from_url(stack.env["EDUAIQ_REDIS_URL"])
        got_bytes = threading.Event()

        def stream() -> None:
            try:
                with httpx.stream("POST", gw_a + "/v1/chat/completions", timeout=60,
                                  headers={"Authorization": f"Bearer {stack.key('alice')}"},
                                  json={"model": "demo-chat", "stream": True, "max_tokens": 100,
                                        "messages": [{"role": "user", "content": "long story"}]}) as resp:  # fmt: skip
                    for _ in resp.iter_bytes():
                        got_bytes.set()
            except httpx.HTTPError:
                pass  # the gateway dies under it

        reader = threading.Thread(target=stream)
        reader.start()
        assert got_bytes.wait(30)
        held = [h.decode() for h in r.hkeys(keys.records(stack.institution))]
        assert len(held) == 1, held
        dead = held[0]
        leases = keys.limit_leases(
            stack.institution, keys.limit_member_key(keys.limit_member("cs101"), "alice")
        )
        assert r.zscore(leases, dead) is not None

        busy = _chat(gw_b, stack.key("alice"))  # her one request at a time is in progress on A
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "rate_limit_exceeded", busy.text
        assert "allows 1 request at a time" in busy.json()["error"]["message"]
        # Bob has no request in progress, but the model's one slot is taken.
        no_slot = _chat(gw_b, stack.key("bob"))
        assert no_slot.status_code == 429 and no_slot.json()["error"]["code"] == "rate_limit_exceeded"
        assert no_slot.json()["error"]["message"].startswith("The only GPU slot of demo-chat is busy"), (
            no_slot.text
        )

        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        reader.join(60)

        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 60  # a bound for the poll, far above the 3 s lease
        while time.monotonic() < deadline:
            got = _chat(gw_b, stack.key("alice"))
            answers.append((got.status_code, got.text[:120]))
            if got.status_code == 200:
                break
            assert got.status_code == 429 and got.json()["error"]["code"] == "rate_limit_exceeded", got.text
            time.sleep(0.3)
        assert answers[-1][0] == 200, answers
        # Served while the dead request's hold still lives: its lease (and slot) lapsed, not its hold.
        assert r.hexists(keys.records(stack.institution), dead), "the hold expired before the lease lapsed"
        assert r.zscore(leases, dead) is None

        # The dead hold is billed at expiry, at its bound, as budgets bill any dead gateway's hold.
        deadline = time.monotonic() + 90
        while not (
            unsettled := [row for row in _rows(stack.db_url, stack.institution) if row[0] == "unsettled"]
        ):
            assert time.monotonic() < deadline, "the dead hold was never billed"
            time.sleep(0.5)
        assert [(s, u, c, o) for s, u, c, o, _ in unsettled] == [("unsettled", "alice", 100, 0)], unsettled
        assert unsettled[0][4]["allocation"]["cost"] == 100
        assert not r.hexists(keys.records(stack.institution), dead)
        assert _chat(gw_b, stack.key("alice")).status_code == 200  # and nothing of it still blocks her


# ---- 2. headers, and 3. refusals cost nothing --------------------------------------------------------------


def _small_token_cap(doc: dict[str, Any]) -> None:
    """A prompt of 5,000 bytes is above CS101's personal token allowance: a budget refusal."""
    _per_token(doc)
    _cs101(doc)["member_cap"] = {"cost": {"fixed": 5}, "tokens": {"fixed": 2000}}


def _limited(doc: dict[str, Any]) -> None:
    _small_token_cap(doc)
    _cs101(doc)["member_limits"] = {"requests_per_minute": 3, "tokens_per_minute": 1_000_000}
    doc["providers"][0]["contract"] = {"cost": CONTRACT_MICRO / 1_000_000, "period": "month"}


@pytest.fixture(scope="module")
def unlimited(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("nolim"),
                       mutate=_small_token_cap, upstream_args=("--reply-tokens", "20")) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def limited(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("limf"),
                       mutate=_limited, consumer=True, upstream_args=("--reply-tokens", "20")) as s:  # fmt: skip
        yield s


def _stream(stack: Stack, who: str) -> httpx.Response:
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {stack.key(who)}"},
                      json={"model": "demo-chat", "max_tokens": 20, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as resp:  # fmt: skip
        for _ in resp.iter_bytes():
            pass
    return resp


def test_no_rate_limit_headers_on_an_institution_without_limits(unlimited: Stack) -> None:
    served = _chat(unlimited.base_url, unlimited.key("alice"))
    streamed = _stream(unlimited, "alice")
    refused = _chat(unlimited.base_url, unlimited.key("alice"), text="word " * 1_000)
    assert (served.status_code, streamed.status_code, refused.status_code) == (200, 200, 429)
    assert refused.json()["error"]["code"] == "insufficient_quota", refused.text
    for r in (served, streamed, refused):
        assert not [h for h in r.headers if h.startswith("x-ratelimit-")], dict(r.headers)


def test_rate_limit_headers_on_served_streamed_and_budget_refused_answers_of_a_limited_path(
    limited: Stack,
) -> None:
    """Bob's path has a member limit of 3 requests a minute: a 200, a stream and a budget refusal (his token
    allowance) all carry the six headers; the refusal counted no request (2 of 3 used, 1 left)."""
    served = _chat(limited.base_url, limited.key("bob"))
    streamed = _stream(limited, "bob")
    refused = _chat(limited.base_url, limited.key("bob"), text="word " * 1_000)
    assert (served.status_code, streamed.status_code, refused.status_code) == (200, 200, 429)
    assert refused.json()["error"]["code"] == "insufficient_quota", refused.text
    for r in (served, streamed, refused):
        assert {h: r.headers.get(h) for h in RATE_HEADERS if h not in r.headers} == {}, dict(r.headers)
        assert r.headers["x-ratelimit-limit-requests"] == "3"
    left = [r.headers["x-ratelimit-remaining-requests"] for r in (served, streamed, refused)]
    assert left == ["2", "1", "1"]


def test_rate_limit_and_contract_refusals_cost_nothing(limited: Stack) -> None:
    """Alice's fourth request of the minute is refused by her limit, Rita's last by the provider's contract:
    neither leaves a charge in the ledger, a hold in the counters, or a request in Alice's window."""
    inst = limited.institution
    alice = [_chat(limited.base_url, limited.key("alice")) for _ in range(5)]
    assert [r.status_code for r in alice] == [200, 200, 200, 429, 429], [r.text for r in alice]
    assert {r.json()["error"]["code"] for r in alice[3:]} == {"rate_limit_exceeded"}
    rita: list[httpx.Response] = []
    while not rita or rita[-1].status_code == 200:
        assert len(rita) < CONTRACT_MICRO, "the contract never refused"
        rita.append(_chat(limited.base_url, limited.key("rita")))
    last = rita[-1]
    assert last.status_code == 429 and last.json()["error"]["code"] == "insufficient_quota", last.text
    assert "contract with demo is fully committed" in last.json()["error"]["message"]

    rows = _wait_rows(limited, {"alice": len(alice), "rita": len(rita)})
    refused = [row for row in rows if row[0] == "refused"]
    assert len(refused) == 3  # Alice's two, Rita's one
    assert [(c, o) for _, _, c, o, _ in refused] == [(0, 0)] * len(refused)
    assert all(not (f or {}).get("allocation") for *_, f in refused)  # no funding: nothing was taken
    served = sum(c for s, _, c, _, _ in rows if s != "refused")
    assert served <= CONTRACT_MICRO

    r = redis.Redis.from_url(limited.env["EDUAIQ_REDIS_URL"])
    assert r.hlen(keys.records(inst)) == 0  # no hold left behind
    window = keys.limit_window(inst, keys.limit_member_key(keys.limit_member("cs101"), "alice"))
    total = r.hget(window, "t")
    assert total is not None and total.decode().split()[0] == "3"  # the refused two were never counted
    assert set(_reserved(limited, "alice").values()) == {0}
    assert set(_reserved(limited, "rita").values()) == {0}
    check = limited.cli("quota", "check", "-i", inst)  # counters (contract cell included) equal the ledger
    assert check.returncode == 0, check.stdout + check.stderr
