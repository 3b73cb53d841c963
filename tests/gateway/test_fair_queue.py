"""Fair queues for a self-hosted model's slots, through two real gateway processes.

When every slot is busy, the next one goes by weighted fair share between units (teaching 3 : research 1),
not first come first served; a unit alone gets every slot, and never more than the model has.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.harness import Stack, gateway_stack, metric_samples

SLOTS = 4


def _queued(doc: dict[str, Any]) -> None:
    doc["providers"][0]["models"][0].update(slots=SLOTS, queue={"max_wait_seconds": 120, "max_waiting": 2000})
    doc["fair_share"] = {"weights": {"teaching": 3, "research": 1}}


@pytest.fixture(scope="module")
def queued(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("fq"), mutate=_queued,
                       gateways=2, upstream_args=("--latency-ms", "50")) as s:  # fmt: skip
        yield s


async def _fire(stack: Stack, who: list[str]) -> list[tuple[float, str, httpx.Response]]:
    """Every request at once over both gateways; (completion time, who, response) in completion order."""
    urls = stack.env["GATEWAY_URLS"].split(",")
    done: list[tuple[float, str, httpx.Response]] = []
    limits = httpx.Limits(max_connections=len(who), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = asyncio.Event()

        async def one(i: int, name: str) -> None:
            await start.wait()
            r = await client.post(f"{urls[i % len(urls)]}/v1/chat/completions",
                                  headers={"Authorization": f"Bearer {stack.key(name)}"},
                                  json={"model": "demo-chat", "max_tokens": 16,
                                        "messages": [{"role": "user", "content": f"request {i}"}]})  # fmt: skip
            done.append((time.monotonic(), name, r))

        tasks = [asyncio.create_task(one(i, name)) for i, name in enumerate(who)]
        await asyncio.sleep(0.3)
        start.set()
        await asyncio.gather(*tasks)
    return sorted(done, key=lambda d: d[0])


def _queue_waits(stack: Stack) -> float:
    return sum(
        value
        for url in stack.env["GATEWAY_URLS"].split(",")
        for (name, _), value in metric_samples(url).items()
        if name == "eduaiq_queue_wait_seconds_count"
    )


def test_weighted_3_to_1_over_400_completions(queued: Stack) -> None:
    before = _queue_waits(queued)
    done = asyncio.run(_fire(queued, ["alice" if i % 2 else "rita" for i in range(600)]))
    assert all(r.status_code == 200 for _, _, r in done), [
        r.text for _, _, r in done if r.status_code != 200
    ][:3]
    assert all("x-eduaiq-queue-time-ms" in r.headers for _, _, r in done)
    first = [name for _, name, _ in done[:400]]
    share = first.count("alice") / len(first)
    assert 0.70 <= share <= 0.80, share  # teaching 3 : research 1
    assert _queue_waits(queued) - before == 600


def test_an_idle_unit_leaves_every_slot_to_the_other(queued: Stack) -> None:
    stats_url = queued.upstream_url.removesuffix("/v1") + "/demo/stats"
    peak, stop = [0], threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                peak[0] = max(peak[0], int(c.get(stats_url).json()["inflight"]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        done = asyncio.run(_fire(queued, ["rita"] * 100))
    finally:
        stop.set()
        sampler.join()
    assert [r.status_code for _, _, r in done] == [200] * 100
    assert peak[0] == SLOTS, peak  # all of them, and never more


def _one_slot(doc: dict[str, Any]) -> None:
    doc["providers"][0]["models"][0].update(slots=1, queue={"max_wait_seconds": 60, "max_waiting": 3})
    doc["fair_share"] = {"weights": {"teaching": 3, "research": 1}}


def _chat(stack: Stack, who: str, timeout: float = 120) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", timeout=timeout,
                      headers={"Authorization": f"Bearer {stack.key(who)}"},
                      json={"model": "demo-chat", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


def _gone(stack: Stack) -> float:
    return sum(v for (name, labels), v in metric_samples(stack.base_url).items()
               if name == "eduaiq_queue_wait_seconds_count" and ("outcome", "gone") in labels)  # fmt: skip


def test_a_waiter_that_hangs_up_leaves_the_queue_and_is_neither_run_nor_charged(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Any
) -> None:
    """One slot, three places. Alice queues three requests and hangs up on each: they must leave the queue
    at once (so Bob still finds a place), never reach the model, and cost Alice nothing."""
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, mutate=_one_slot,
                       upstream_args=("--latency-ms", "4000")) as s:  # fmt: skip
        stats = s.upstream_url.removesuffix("/v1") + "/demo/stats"
        before = sum(httpx.get(stats).json()["counts"].values())
        holder = threading.Thread(target=_chat, args=(s, "rita"))
        holder.start()
        while httpx.get(stats).json()["inflight"] < 1:  # rita holds the only slot
            time.sleep(0.05)
        for _ in range(3):  # each waits in the queue, then the client gives up and closes the connection
            with pytest.raises(httpx.ReadTimeout):
                _chat(s, "alice", timeout=1)
        for _ in range(600):  # until the gateway saw each hang-up (bounded: before, it never did)
            if _gone(s) >= 3:
                break
            time.sleep(0.05)
        bob = _chat(s, "bob")
        holder.join()
        assert bob.status_code == 200, bob.text  # before: 429, the queue still full of alice's ghosts
        assert _gone(s) == 3
        assert sum(httpx.get(stats).json()["counts"].values()) - before == 2  # rita's and bob's only
        me = httpx.get(s.base_url + "/v1/me", headers={"Authorization": f"Bearer {s.key('alice')}"}).json()
        mine = me["budget"]["nodes"][0]
        assert mine["kind"] == "member" and (
            mine["metrics"]["cost"]["used"],
            mine["metrics"]["cost"]["reserved"],
        ) == (0, 0)
