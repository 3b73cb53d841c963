"""Failures the budget must survive: a gateway killed mid-request, and Redis losing all its data under load."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg2
import pytest
import redis

from cli.services.process import free_port
from cli.services.redis import start_redis
from core.settings import Settings
from quota import keys
from tests.gateway.harness import gateway_stack
from usage.lag import wait_for_ledger

PER_REQUEST = 20  # tokens, and micro-units: input is free and each output token costs 1 micro-unit


def _priced(cap_micro: int) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["providers"][0]["models"][0]["price"] = {"input_per_mtok": 0, "output_per_mtok": 1}
        cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
        cs101["budget"] = {"cost": {"fixed": cap_micro / 1_000_000}}
        del cs101["member_cap"]

    return mutate


def _cost(stack: Any, who: str = "alice") -> dict[str, int]:
    me = httpx.get(
        stack.base_url + "/v1/me", headers={"Authorization": f"Bearer {stack.key(who)}"}, timeout=30
    ).json()
    course = next(n for n in me["budget"]["nodes"] if n["unit"] == "cs101" and n["kind"] != "member")
    return course["metrics"]["cost"]  # type: ignore[no-any-return]


def test_gateway_killed_mid_stream_is_billed_at_its_hold_in_counters_and_ledger(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGKILL while a stream is being served: nobody can report what was served, so after the deadline the
    survivor's sweeper bills the hold (an upper bound) and writes its usage event from the skeleton the dead
    gateway stored with it. Before the fix the hold was released: the served stream cost nothing."""
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, mutate=_priced(10_000), gateways=2,
                       consumer=True,
                       upstream_args=("--chunk-delay-ms", "200", "--reply-tokens", "200"),
                       extra_env={"EDUAIQ_RESERVATION_TTL_SECONDS": "5"}) as stack:  # fmt: skip
        first, second = stack.env["GATEWAY_URLS"].split(",")
        doomed = stack.procs[1]  # procs: upstream, gateway 0, gateway 1
        got_bytes = threading.Event()

        def stream() -> None:
            try:
                with httpx.stream("POST", first + "/v1/chat/completions", timeout=30,
                                  headers={"Authorization": f"Bearer {stack.key('alice')}"},
                                  json={"model": "demo-chat", "stream": True, "max_tokens": 100,
                                        "messages": [{"role": "user", "content": "long story"}]}) as r:  # fmt: skip
                    for _ in r.iter_bytes():
                        got_bytes.set()
            except httpx.HTTPError:
                pass  # the gateway dies under it

        reader = threading.Thread(target=stream)
        reader.start()
        assert got_bytes.wait(20)
        held = _cost(stack.__class__(second, stack.institution, stack.db_url, stack.env, stack.upstream_url))
        assert held["reserved"] == 100 and held["used"] == 0  # reserved 100 tokens x 1 micro-unit
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        reader.join(30)

        survivor = stack.__class__(second, stack.institution, stack.db_url, stack.env, stack.upstream_url)
        deadline = time.monotonic() + 30
        while (state := _cost(survivor))["reserved"] != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert state == {**state, "reserved": 0, "used": 100}  # billed at the hold by the survivor's sweeper
        assert state["room"] == 9_900
        deadline = time.monotonic() + 60
        while (
            rows := _ledger_rows(stack.db_url, stack.institution, "unsettled")
        ) == [] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [(r[1], r[2], r[3]) for r in rows] == [(100, 0, "alice")]  # cost, overage, user: funded whole
        assert rows[0][4]["allocation"]["cost"] == 100  # the funding `quota rebuild` replays


async def _burst(base: str, key: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*[
            client.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                        json={"model": "demo-chat", "max_tokens": PER_REQUEST,
                              "messages": [{"role": "user", "content": f"q{i}"}]})
            for i in range(n)
        ])  # fmt: skip


def _ledger_rows(db_url: str, institution: str, status: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("select request_id, cost_micro, overage_micro, user_id, funding from usage_event"
                    " where institution_id = %s and status = %s", (institution, status))  # fmt: skip
        return list(cur.fetchall())


def _ledger_cost(db_url: str, institution: str) -> tuple[int, int, int]:
    conn = psycopg2.connect(db_url)
    with conn.cursor() as cur:
        cur.execute("select count(*), coalesce(sum(cost_micro), 0), coalesce(sum(cost_micro - overage_micro), 0) "
                    "from usage_event where institution_id = %s and status in ('ok', 'clamped')", (institution,))  # fmt: skip
        count, cost, funded = cur.fetchone()  # type: ignore[misc]
    conn.close()
    return int(count), int(cost), int(funded)


@pytest.mark.slow
def test_redis_flushed_under_load_rebuilds_from_the_ledger_and_never_exceeds_the_cap(
    pg_server_url: str, private_redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    cap = 100 * PER_REQUEST
    with gateway_stack(pg_server_url, private_redis_url, kafka_bootstrap, tmp_path, mutate=_priced(cap),
                       consumer=True, upstream_args=("--reply-tokens", "1000", "--chunk-delay-ms", "5")) as stack:  # fmt: skip
        key = stack.key("alice")
        flusher = redis.Redis.from_url(private_redis_url)

        async def scenario() -> list[httpx.Response]:
            first = asyncio.create_task(_burst(stack.base_url, key, 60))
            await asyncio.sleep(0.05)
            flusher.flushall()  # Redis loses everything while requests are in flight
            done = await first
            later = await _burst(stack.base_url, key, 150)
            return done + later

        responses = asyncio.run(scenario())
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 429}, statuses
        deadline = time.monotonic() + 60
        while (
            _ledger_cost(stack.db_url, stack.institution)[0] < statuses[200] and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        count, cost, funded = _ledger_cost(stack.db_url, stack.institution)
        assert count == statuses[200]
        state = _cost(stack)
        assert state["used"] <= cap and state["reserved"] == 0
        assert funded <= cap  # what budgets paid for never exceeds the cap
        assert state["used"] == funded  # and the rebuilt counters agree with the ledger
        # Every served request is in the ledger at its full cost; any caught mid-flight by the flush is
        # recorded as unfunded overage (cost - funded) rather than pushed past the cap.
        assert cost == statuses[200] * PER_REQUEST


def test_settle_while_redis_is_down_is_retried_and_the_request_is_charged_in_full(
    pg_server_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Redis goes away while a stream is being served, so its settle fails; Redis comes back (append-only
    file intact). The settle is retried: counters and ledger both carry the 30 tokens served. Before the fix
    the event was written at once with 0 tokens and 0 cost, and the sweeper then released the hold: free."""
    port = free_port()
    data = tmp_path / "redis"
    server = start_redis(data, port, persist=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with gateway_stack(pg_server_url, url, kafka_bootstrap, tmp_path, mutate=_priced(10_000), consumer=True,
                           upstream_args=("--chunk-delay-ms", "150", "--reply-tokens", "30")) as stack:  # fmt: skip
            got_bytes, body = threading.Event(), bytearray()

            def stream() -> None:
                with httpx.stream("POST", stack.base_url + "/v1/chat/completions", timeout=60,
                                  headers={"Authorization": f"Bearer {stack.key('alice')}"},
                                  json={"model": "demo-chat", "stream": True, "max_tokens": 100,
                                        "messages": [{"role": "user", "content": "long story"}]}) as r:  # fmt: skip
                    for chunk in r.iter_bytes():
                        body.extend(chunk)
                        got_bytes.set()

            reader = threading.Thread(target=stream)
            reader.start()
            assert got_bytes.wait(20)
            server.stop()  # the stream goes on; its settle will find no Redis
            reader.join(60)
            assert body.endswith(b"data: [DONE]\n\n")  # the student got the whole answer
            time.sleep(1.0)  # the settle has failed at least once by now
            server = start_redis(data, port, persist=True)
            deadline = time.monotonic() + 60
            while (
                not (rows := _ledger_rows(stack.db_url, stack.institution, "ok"))
                and time.monotonic() < deadline
            ):
                time.sleep(0.5)
            assert [(r[1], r[2]) for r in rows] == [(30, 0)]  # 30 output tokens x 1 micro-unit, funded
            assert rows[0][4]["allocation"]["cost"] == 30
            state = _cost(stack)
            assert (state["used"], state["reserved"]) == (30, 0)
    finally:
        server.stop()


def test_a_stream_outliving_the_reservation_ttl_keeps_its_hold(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A 60-token stream lasting ~12 s on a 5 s TTL, on a cap of 100: its lease is renewed while it lives, so a
    second request made after the first deadline finds only 40 left (clamped), and the first is settled, not
    billed by the sweeper. Before the fix the sweeper released the live hold at 5 s, the second request took
    60 and the cap was passed (120 spent on 100)."""
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, mutate=_priced(100), consumer=True,
                       upstream_args=("--chunk-delay-ms", "200", "--reply-tokens", "60"),
                       extra_env={"EDUAIQ_RESERVATION_TTL_SECONDS": "5"}) as stack:  # fmt: skip
        headers = {"Authorization": f"Bearer {stack.key('alice')}"}
        got_bytes = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", stack.base_url + "/v1/chat/completions", timeout=60, headers=headers,
                              json={"model": "demo-chat", "stream": True, "max_tokens": 60,
                                    "messages": [{"role": "user", "content": "long story"}]}) as r:  # fmt: skip
                for _ in r.iter_bytes():
                    got_bytes.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert got_bytes.wait(20)
        time.sleep(7)  # past the first deadline (5 s) and a sweep (every second)
        assert _cost(stack)["reserved"] == 60  # still held by the live stream
        second = httpx.post(stack.base_url + "/v1/chat/completions", headers=headers, timeout=60,
                            json={"model": "demo-chat", "max_tokens": 60,
                                  "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert second.status_code == 200 and second.headers["x-eduaiq-max-tokens-clamped"] == "60->40"
        reader.join(60)
        deadline = time.monotonic() + 60
        while len(rows := _ledger_rows(stack.db_url, stack.institution, "ok") + _ledger_rows(
            stack.db_url, stack.institution, "clamped")) < 2 and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.5)
        assert sorted(r[1] for r in rows) == [40, 60]  # both settled with what was served
        assert _ledger_rows(stack.db_url, stack.institution, "unsettled") == []
        state = _cost(stack)
        assert (state["used"], state["reserved"]) == (100, 0)


def _sidecars(gateway: Any) -> list[psutil.Process]:
    return psutil.Process(gateway.pid).children(recursive=True)


@pytest.mark.parametrize("sidecar_after", ["killed", "resumed"])
def test_a_gateway_killed_while_billing_unsettled_holds_loses_none_and_a_repeat_is_one_ledger_row(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path, sidecar_after: str
) -> None:
    """Gateway A is SIGKILLed mid-stream; its hold expires and gateway B's sweeper bills it. B's usage pipeline
    is stopped (its sidecar SIGSTOPped), so B takes the unsettled entry but its event reaches nothing durable;
    then B is SIGKILLed (a pod kill). Gateway C (paused meanwhile, so that B is the one that takes it) must
    write the row. 'killed': B's sidecar dies too, the event B wrote is gone. 'resumed': B's sidecar lives on
    and delivers B's event as well, so the ledger receives the same event twice and keeps one row. Before the
    fix the entry was popped: with 'killed' the hold, charged to the counters, never reached the ledger."""
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, mutate=_priced(10_000), gateways=3,
                       consumer=True, upstream_args=("--chunk-delay-ms", "200", "--reply-tokens", "200"),
                       extra_env={"EDUAIQ_RESERVATION_TTL_SECONDS": "5"}) as stack:  # fmt: skip
        first, _, third = stack.env["GATEWAY_URLS"].split(",")
        gw_a, gw_b, gw_c = stack.procs[1:4]  # procs: upstream, the three gateways, the consumer
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        gw_c.send_signal(signal.SIGSTOP)
        b_sidecars = _sidecars(gw_b)
        assert b_sidecars
        try:
            got_bytes = threading.Event()

            def stream() -> None:
                try:
                    with httpx.stream("POST", first + "/v1/chat/completions", timeout=30,
                                      headers={"Authorization": f"Bearer {stack.key('alice')}"},
                                      json={"model": "demo-chat", "stream": True, "max_tokens": 100,
                                            "messages": [{"role": "user", "content": "long story"}]}) as resp:  # fmt: skip
                        for _ in resp.iter_bytes():
                            got_bytes.set()
                except httpx.HTTPError:
                    pass  # the gateway dies under it

            reader = threading.Thread(target=stream)
            reader.start()
            assert got_bytes.wait(20)
            for p in b_sidecars:
                p.suspend()  # B's usage pipeline stops taking events
            gw_a.send_signal(signal.SIGKILL)
            gw_a.wait(10)
            reader.join(30)
            # B's sweeper bills the hold after its deadline and B's billing round takes the entry.
            deadline = time.monotonic() + 60
            while (r.hlen(keys.records(stack.institution)) or r.llen(keys.unsettled(stack.institution))) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.2)
            assert r.hlen(keys.records(stack.institution)) == 0
            assert r.llen(keys.unsettled(stack.institution)) == 0
            gw_b.send_signal(signal.SIGKILL)
            gw_b.wait(10)
            for p in b_sidecars:
                if sidecar_after == "killed":
                    p.kill()
                else:
                    p.resume()  # it reads what B wrote before dying, sends it, and exits
                    p.wait(60)
        finally:
            gw_c.send_signal(signal.SIGCONT)
            for p in b_sidecars:
                with contextlib.suppress(psutil.Error):
                    p.resume()
        # C takes the lapsed claim (after one TTL) and writes the row.
        deadline = time.monotonic() + 90
        while r.zcard(keys.unsettled_claimed(stack.institution)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert r.zcard(keys.unsettled_claimed(stack.institution)) == 0, (
            "nobody wrote the unsettled hold's event"
        )
        # Everything any gateway emitted is in the ledger once the consumers have caught up.
        assert wait_for_ledger(Settings(kafka_bootstrap=kafka_bootstrap, kafka_topic=stack.env["EDUAIQ_KAFKA_TOPIC"],
                                        kafka_consumer_group=stack.env["EDUAIQ_KAFKA_CONSUMER_GROUP"]), 60)  # fmt: skip
        rows = _ledger_rows(stack.db_url, stack.institution, "unsettled")
        assert [(row[1], row[2], row[3]) for row in rows] == [(100, 0, "alice")]  # once, funded whole
        survivor = stack.__class__(third, stack.institution, stack.db_url, stack.env, stack.upstream_url)
        assert _cost(survivor)["used"] == 100  # and the counters agree with it
        r.close()
