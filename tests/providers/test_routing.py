"""Load-aware choice among vLLM replicas (three demo models reporting vLLM /metrics), and surviving one dying."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from providers import UpstreamStreamError, UpstreamUnavailable
from providers.router import Router
from selfhost.demo_model import DemoModelHandle
from tests.providers.conftest import DemoFactory, RouterFactory, priced

BODY = {"model": "llama", "messages": [{"role": "user", "content": "route me"}], "stream": True}


def chat_count(h: DemoModelHandle) -> int:
    return h.state.counts["/chat/completions"]


async def replicas(demo_factory: DemoFactory, **options: object) -> list[DemoModelHandle]:
    return [await demo_factory(**options) for _ in range(3)]


def provider(hs: list[DemoModelHandle]) -> list[dict[str, object]]:
    return [
        {
            "id": "campus",
            "type": "vllm",
            "base_url": hs[0].base_url,
            "replicas": [h.base_url for h in hs[1:]],
            "models": [priced("llama", "demo-chat")],
        }
    ]


async def stream_one(router: Router) -> None:
    resp = await router.open("llama", BODY, stream=True)
    async for _ in resp:
        pass


async def eventually(check: Callable[[], bool], poke: Callable[[], Awaitable[object]] | None = None) -> None:
    """Wait (bounded) for a background effect; `poke` sends traffic meanwhile."""
    for _ in range(200):
        if check():
            return
        if poke is not None:
            try:
                await poke()
            except (UpstreamStreamError, UpstreamUnavailable):
                pass
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_sequential_requests_go_to_the_least_loaded_replica(
    demo_factory: DemoFactory, router_factory: RouterFactory
) -> None:
    hs = await replicas(demo_factory)
    for h, running in zip(hs, (8, 3, 0), strict=True):
        h.set_load(running=running)
    router = await router_factory(provider(hs), refresh_interval=0.2)
    for _ in range(10):
        await stream_one(router)
    assert [chat_count(h) for h in hs] == [0, 0, 10]
    hs[2].set_load(waiting=6)  # the idle one now has a queue: the next scrape moves traffic to the middle one
    await router.refresh()
    for _ in range(5):
        await stream_one(router)
    assert [chat_count(h) for h in hs] == [0, 5, 10]


async def test_kv_cache_pressure_counts_as_load(
    demo_factory: DemoFactory, router_factory: RouterFactory
) -> None:
    hs = await replicas(demo_factory, kv_metric="gpu_cache_usage_perc")  # vLLM v0 metric name
    hs[0].set_load(running=1, kv_cache=0.1)
    hs[1].set_load(running=1, kv_cache=0.99)
    hs[2].set_load(running=2, kv_cache=0.2)
    router = await router_factory(provider(hs), refresh_interval=0.2)
    for _ in range(4):
        await stream_one(router)
    assert [chat_count(h) for h in hs] == [4, 0, 0]


async def test_concurrent_requests_spread_by_load_and_in_flight_count(
    demo_factory: DemoFactory, router_factory: RouterFactory
) -> None:
    hs = await replicas(demo_factory, chunk_delay_ms=20, reply_tokens=10)
    for h, running in zip(hs, (8, 3, 0), strict=True):
        h.set_load(running=running)
    router = await router_factory(provider(hs), refresh_interval=0.2)
    await asyncio.gather(*(stream_one(router) for _ in range(12)))
    a, b, c = (chat_count(h) for h in hs)
    assert a == 0 and c > b > 0 and a + b + c == 12


async def test_a_replica_killed_mid_run_fails_no_request_before_its_first_byte(
    demo_factory: DemoFactory, router_factory: RouterFactory
) -> None:
    hs = await replicas(demo_factory, chunk_delay_ms=3, reply_tokens=8)
    router = await router_factory(
        provider(hs), refresh_interval=0.1, breaker_failures=2, breaker_cooldown=0.5
    )
    victim = "campus#2/llama"
    opened = mid_stream_failures = fell_back = 0
    done = 0
    killed = asyncio.Event()

    async def worker() -> None:
        nonlocal opened, mid_stream_failures, fell_back, done
        while done < 150:
            resp = await router.open("llama", BODY, stream=True)  # must never raise: fallback covers it
            opened += 1
            if resp.attempts:
                assert {a.deployment_id for a in resp.attempts} == {victim}
                assert resp.served_by.deployment_id != victim
                fell_back += 1
            try:
                async for _ in resp:
                    pass
            except UpstreamStreamError:
                mid_stream_failures += 1
            done += 1
            if done == 30 and not killed.is_set():
                killed.set()
                await hs[2].kill()

    await asyncio.gather(*(worker() for _ in range(6)))
    assert killed.is_set() and opened >= 150
    assert fell_back > 0  # requests did meet the dead replica, and were served elsewhere
    assert mid_stream_failures <= 6  # only streams already running on the victim broke
    assert router.breaker_state(victim) == "open"
    served_before_return = chat_count(hs[2])

    await hs[2].restart()
    await eventually(lambda: router.breaker_state(victim) == "closed", poke=lambda: stream_one(router))
    for _ in range(6):
        await stream_one(router)
    assert chat_count(hs[2]) > served_before_return
