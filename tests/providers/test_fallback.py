"""The fallback chain: campus vLLM, then Together.ai for the same open-weight model, then a commercial model.

Each hop is a local server on the provider's real wire protocol; the routing
result must name the deployment that served and the price to charge.
"""

from __future__ import annotations

import orjson
import pytest

from providers import Price, UpstreamStreamError, UpstreamUnavailable
from providers.router import Router
from selfhost.demo_model import DemoModelHandle
from tests.providers.conftest import DemoFactory, RouterFactory, priced

BODY = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "explain recursion"}]}


@pytest.fixture
async def chain(
    demo_factory: DemoFactory, router_factory: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle]:
    monkeypatch.setenv("TEST_TOGETHER_KEY", "tg-key")
    monkeypatch.setenv("TEST_OPENAI_KEY", "oa-key")
    campus = await demo_factory()
    together = await demo_factory(api_key="tg-key")
    openai = await demo_factory(api_key="oa-key")
    providers = [
        {
            "id": "campus-vllm",
            "type": "vllm",
            "base_url": campus.base_url,
            "timeouts": {"first_byte": 0.5},
            "models": [priced("llama-3.1-8b", "demo-chat", 0.05, 0.08, fallbacks=["gpt-4o-mini"])],
        },
        {
            "id": "together",
            "type": "together",
            "base_url": together.base_url,
            "api_key_env": "TEST_TOGETHER_KEY",
            "timeouts": {"first_byte": 0.5},
            "models": [priced("llama-3.1-8b", "demo-chat", 0.18, 0.18)],
        },
        {
            "id": "openai",
            "type": "openai",
            "base_url": openai.base_url,
            "api_key_env": "TEST_OPENAI_KEY",
            "models": [priced("gpt-4o-mini", "demo-chat", 0.15, 0.60)],
        },
    ]
    router = await router_factory(providers, breaker_failures=1, breaker_cooldown=30)
    return router, campus, together, openai


async def test_the_chain_is_campus_then_together_then_the_commercial_model(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router = chain[0]
    assert router.chain("llama-3.1-8b") == [
        ["campus-vllm/llama-3.1-8b"],
        ["together/llama-3.1-8b"],
        ["openai/gpt-4o-mini"],
    ]
    assert router.price_ceiling("llama-3.1-8b") == Price(180_000, 600_000, None, "internal")
    assert router.price_ceiling("llama-3.1-8b", allowed_models=["llama-3.1-8b"]).output_per_mtok == 180_000


async def test_campus_down_is_served_by_together_at_togethers_price(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router, campus, together, _ = chain
    await campus.kill()
    resp = await router.open("llama-3.1-8b", {**BODY, "stream": True}, stream=True)
    body = await resp.read()
    assert body.endswith(b"data: [DONE]\n\n")
    assert resp.served_by.deployment_id == "together/llama-3.1-8b"
    assert resp.served_by.provider_type == "together"
    assert resp.served_by.price == Price(180_000, 180_000, None, "contract")
    assert [a.deployment_id for a in resp.attempts] == ["campus-vllm/llama-3.1-8b"]
    assert resp.usage is not None
    assert resp.served_by.price.cost_micros(resp.usage) == -(
        -(resp.usage.input + resp.usage.output) * 180_000 // 1_000_000
    )
    assert together.received[-1]["model"] == "demo-chat"


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_5xx_and_429_move_on_down_the_chain(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle], status: int
) -> None:
    router, campus, together, openai = chain
    campus.fail(status)
    together.fail(status)
    resp = await router.open("llama-3.1-8b", BODY, stream=False)
    data = orjson.loads(await resp.read())
    assert resp.status == 200 and data["object"] == "chat.completion"
    assert resp.served_by.model_id == "gpt-4o-mini" and resp.served_by.deployment_id == "openai/gpt-4o-mini"
    assert resp.served_by.price == Price(150_000, 600_000, None, "contract")
    assert [a.status for a in resp.attempts] == [status, status]
    assert openai.received[-1]["model"] == "demo-chat"


async def test_a_campus_timeout_before_the_first_byte_falls_back(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router, campus, _, _ = chain
    campus.fail(mode="hang")
    resp = await router.open("llama-3.1-8b", BODY, stream=True)
    await resp.read()
    assert resp.served_by.deployment_id == "together/llama-3.1-8b"
    assert "timed out" in resp.attempts[0].reason


async def test_client_errors_do_not_fall_back(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router, campus, together, _ = chain
    campus.fail(400)
    resp = await router.open("llama-3.1-8b", BODY, stream=False)
    assert resp.status == 400 and resp.served_by.deployment_id == "campus-vllm/llama-3.1-8b"
    assert together.received == []


async def test_no_fallback_after_the_first_byte(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router, campus, together, _ = chain
    campus.configure(chunk_delay_ms=1)
    campus.fail(mode="midstream")
    resp = await router.open("llama-3.1-8b", {**BODY, "stream": True}, stream=True)
    first = await resp.__anext__()
    assert first.startswith(b"data: ")
    with pytest.raises(UpstreamStreamError):
        async for _ in resp:
            pass
    assert resp.usage is None
    assert together.received == []


async def test_an_open_breaker_skips_the_deployment_without_trying_it(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router, campus, _, _ = chain
    campus.fail(503, count=1)
    first = await router.open("llama-3.1-8b", BODY, stream=False)
    assert first.served_by.provider_id == "together"
    assert router.breaker_state("campus-vllm/llama-3.1-8b") == "open"
    before = campus.state.counts["/chat/completions"]
    second = await router.open("llama-3.1-8b", BODY, stream=False)
    assert second.served_by.provider_id == "together" and second.attempts == ()
    assert campus.state.counts["/chat/completions"] == before


async def test_policy_keeps_cross_model_fallbacks_out(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router, campus, together, openai = chain
    campus.fail(502)
    together.fail(502)
    with pytest.raises(UpstreamUnavailable) as err:
        await router.open("llama-3.1-8b", BODY, stream=False, allowed_models={"llama-3.1-8b"})
    assert err.value.status == 502
    assert [a.deployment_id for a in err.value.attempts] == [
        "campus-vllm/llama-3.1-8b",
        "together/llama-3.1-8b",
    ]
    assert openai.received == []


async def test_everything_timing_out_is_a_504(
    chain: tuple[Router, DemoModelHandle, DemoModelHandle, DemoModelHandle],
) -> None:
    router, campus, together, _ = chain
    campus.fail(mode="hang")
    together.fail(mode="hang")
    with pytest.raises(UpstreamUnavailable) as err:
        await router.open(
            "llama-3.1-8b", {**BODY, "stream": True}, stream=True, allowed_models={"llama-3.1-8b"}
        )
    assert err.value.status == 504
    assert all("timed out" in a.reason for a in err.value.attempts)


async def test_image_requests_skip_fallbacks_that_cannot_see(
    demo_factory: DemoFactory, router_factory: RouterFactory
) -> None:
    campus, text_only, vision = [await demo_factory() for _ in range(3)]
    providers = [
        {"id": "campus", "type": "vllm", "base_url": campus.base_url,
         "models": [priced("qwen-vl", "demo-vision", vision=True, fallbacks=["llama", "gpt-4o"])]},
        {"id": "small", "type": "vllm", "base_url": text_only.base_url, "models": [priced("llama", "demo-chat")]},
        {"id": "big", "type": "vllm", "base_url": vision.base_url,
         "models": [priced("gpt-4o", "demo-vision", 2.5, 10, vision=True)]},
    ]  # fmt: skip
    router = await router_factory(providers)
    campus.fail(503)
    body = {"model": "qwen-vl", "messages": [{"role": "user", "content": "x"}]}
    resp = await router.open("qwen-vl", body, stream=False, needs_vision=True)
    assert resp.served_by.model_id == "gpt-4o" and text_only.received == []
    resp = await router.open("qwen-vl", body, stream=False)
    assert resp.served_by.model_id == "llama"
