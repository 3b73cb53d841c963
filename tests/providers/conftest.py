from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from providers import RoutingConfig, build_router
from providers.router import Router
from selfhost.demo_model import DemoModelHandle, start_demo_model
from tests.providers.anthropic_double import API_KEY as ANTHROPIC_KEY
from tests.providers.anthropic_double import AnthropicDouble
from tests.providers.gemini_double import API_KEY as GEMINI_KEY
from tests.providers.gemini_double import GeminiDouble

DemoFactory = Callable[..., Awaitable[DemoModelHandle]]
RouterFactory = Callable[..., Awaitable[Router]]


@pytest.fixture
async def demo_factory() -> AsyncIterator[DemoFactory]:
    handles: list[DemoModelHandle] = []

    async def make(**options: Any) -> DemoModelHandle:
        h = await start_demo_model("127.0.0.1", 0, **options)
        handles.append(h)
        return h

    yield make
    for h in handles:
        await h.close()


@pytest.fixture
async def demo(demo_factory: DemoFactory) -> DemoModelHandle:
    return await demo_factory()


@pytest.fixture
async def router_factory() -> AsyncIterator[RouterFactory]:
    routers: list[Router] = []

    async def make(providers: list[dict[str, Any]], **routing: Any) -> Router:
        r = build_router(providers, routing=RoutingConfig(**routing))
        await r.start()
        routers.append(r)
        return r

    yield make
    for r in routers:
        await r.close()


@pytest.fixture
async def anthropic(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AnthropicDouble]:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    d = await AnthropicDouble().start()
    yield d
    await d.close()


@pytest.fixture
async def gemini(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GeminiDouble]:
    monkeypatch.setenv("TEST_GEMINI_KEY", GEMINI_KEY)
    d = await GeminiDouble().start()
    yield d
    await d.close()


def vllm_provider(pid: str, base_url: str, models: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": pid, "type": "vllm", "base_url": base_url, "models": models, **extra}


def priced(
    model_id: str, upstream: str, inp: float = 0.02, out: float = 0.04, **extra: Any
) -> dict[str, Any]:
    return {
        "id": model_id,
        "upstream": upstream,
        "price": {"input_per_mtok": inp, "output_per_mtok": out},
        **extra,
    }
