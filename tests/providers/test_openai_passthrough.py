"""The OpenAI-compatible passthrough against a server speaking OpenAI's/vLLM's wire protocol (the demo model)."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest

from providers import ModelNotFound, UpstreamStreamError
from selfhost.demo_model import DemoModelHandle
from selfhost.demo_replies import DEMO_IMAGE_RULE
from tests.providers.conftest import DemoFactory, RouterFactory, priced, vllm_provider
from tests.providers.sse_client import collect, finish_reason, text_of, tool_calls_of, usage_chunks
from tests.providers.wire import png_data_url

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def campus(demo: DemoModelHandle, **model_extra: object) -> list[dict[str, object]]:
    return [vllm_provider("campus", demo.base_url, [priced("small", "demo-chat", **model_extra)])]


async def test_stream_is_forwarded_with_usage_captured_and_model_renamed(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    router = await router_factory(campus(demo))
    body = {
        "model": "small",
        "messages": [{"role": "user", "content": "Tell me about the campus library opening hours"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = await router.open("small", body, stream=True)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    _, chunks = await collect(resp)
    sent = demo.received[-1]
    assert sent["model"] == "demo-chat"
    expected_prompt = math.ceil(len(body["messages"][0]["content"]) / 4)
    [usage_chunk] = usage_chunks(chunks)
    assert usage_chunk["usage"]["prompt_tokens"] == expected_prompt
    assert resp.usage is not None
    assert resp.usage.input == expected_prompt
    assert resp.usage.output == len(
        [c for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content")]
    )
    assert text_of(chunks)
    assert resp.served_by.deployment_id == "campus/small"
    assert resp.served_by.price.input_per_mtok == 20_000


async def test_usage_chunk_is_captured_but_not_forwarded_when_the_client_did_not_ask(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    router = await router_factory(campus(demo))
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await router.open("small", body, stream=True)
    _, chunks = await collect(resp)
    assert demo.received[-1]["stream_options"] == {"include_usage": True}  # forced on upstream
    assert usage_chunks(chunks) == []
    assert resp.usage is not None and resp.usage.input == 1 and resp.usage.output > 0


async def test_max_tokens_is_clamped_to_the_smallest_limit(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    router = await router_factory(campus(demo, max_output_tokens=6))
    msg = [{"role": "user", "content": "a long question " * 5}]
    for client_max, gateway_max, expected in ((None, None, 6), (100, 3, 3), (2, 5, 2), (None, 4, 4)):
        body: dict[str, object] = {"model": "small", "messages": msg}
        if client_max is not None:
            body["max_tokens"] = client_max
        resp = await router.open("small", body, stream=False, max_tokens=gateway_max)
        data = orjson.loads(await resp.read())
        assert demo.received[-1]["max_tokens"] == expected
        assert data["usage"]["completion_tokens"] <= expected
        assert resp.usage is not None and resp.usage.output == data["usage"]["completion_tokens"]


async def test_max_completion_tokens_stays_the_field_the_client_used(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    router = await router_factory(campus(demo))
    body = {"model": "small", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 50}
    await (await router.open("small", body, stream=False, max_tokens=7)).read()
    sent = demo.received[-1]
    assert sent["max_completion_tokens"] == 7 and "max_tokens" not in sent


async def test_images_reach_the_upstream_and_count_in_usage(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    router = await router_factory(campus(demo, vision=True))
    url = png_data_url(640, 480)
    body = {
        "model": "small",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        "stream": True,
    }
    resp = await router.open("small", body, stream=True)
    await collect(resp)
    assert demo.received[-1]["messages"][0]["content"][1]["image_url"]["url"] == url
    image_tokens = DEMO_IMAGE_RULE.count(640, 480, "auto")
    assert resp.usage is not None
    assert resp.usage.input == math.ceil(len("What is in this picture?") / 4) + image_tokens


async def test_streamed_tool_calls_pass_through(demo: DemoModelHandle, router_factory: RouterFactory) -> None:
    router = await router_factory(campus(demo))
    body = {
        "model": "small",
        "messages": [{"role": "user", "content": "Use the tool: weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "stream": True,
    }
    resp = await router.open("small", body, stream=True)
    _, chunks = await collect(resp)
    calls = tool_calls_of(chunks)
    assert calls[0]["name"] == "get_weather"
    assert orjson.loads(calls[0]["arguments"]) == {"city": "demo"}
    assert finish_reason(chunks) == "tool_calls"
    assert demo.received[-1]["tools"] == [WEATHER_TOOL]


async def test_completions_and_embeddings_pass_through(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    router = await router_factory(campus(demo))
    resp = await router.open(
        "small",
        {"model": "small", "prompt": "Once upon a time", "max_tokens": 3},
        stream=False,
        endpoint="completions",
    )
    data = orjson.loads(await resp.read())
    assert data["object"] == "text_completion" and data["usage"]["completion_tokens"] == 3
    assert resp.usage is not None and resp.usage.input == math.ceil(len("Once upon a time") / 4)

    resp = await router.open(
        "small", {"model": "small", "input": ["a", "bb"]}, stream=False, endpoint="embeddings"
    )
    data = orjson.loads(await resp.read())
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert "max_tokens" not in demo.received[-1]
    assert resp.usage is not None and resp.usage.input == 2 and resp.usage.output == 0


async def test_client_errors_come_back_as_responses_not_fallbacks(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    # The upstream name is wrong: the upstream answers 404, which is the client's answer, not a reason to fall back.
    router = await router_factory(
        [vllm_provider("campus", demo.base_url, [priced("small", "no-such-upstream")])]
    )
    resp = await router.open(
        "small", {"model": "small", "messages": [{"role": "user", "content": "x"}]}, stream=True
    )
    assert resp.status == 404
    body = orjson.loads(await resp.read())
    assert "does not exist" in body["error"]["message"]
    assert resp.usage is None


async def test_api_key_is_read_from_the_environment_at_request_time(
    demo_factory: DemoFactory, router_factory: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secured = await demo_factory(api_key="campus-secret")
    provider = vllm_provider(
        "campus", secured.base_url, [priced("small", "demo-chat")], api_key_env="TEST_CAMPUS_KEY"
    )
    monkeypatch.delenv("TEST_CAMPUS_KEY", raising=False)
    router = await router_factory([provider])
    body = {"model": "small", "messages": [{"role": "user", "content": "x"}]}
    assert (await router.open("small", body, stream=False)).status == 401
    monkeypatch.setenv("TEST_CAMPUS_KEY", "campus-secret")
    assert (await router.open("small", body, stream=False)).status == 200


async def test_unknown_model_raises(demo: DemoModelHandle, router_factory: RouterFactory) -> None:
    router = await router_factory(campus(demo))
    with pytest.raises(ModelNotFound):
        await router.open("nope", {"model": "nope", "messages": []}, stream=False)


async def test_servers_without_stream_usage_get_output_counted_and_flagged(
    demo_factory: DemoFactory, router_factory: RouterFactory
) -> None:
    quiet = await demo_factory(stream_usage=False)  # like llama-cpp-python's server
    provider = vllm_provider("campus", quiet.base_url, [priced("small", "demo-chat")], stream_usage="counted")
    router = await router_factory([provider])
    msgs = [{"role": "user", "content": "count my tokens please"}]
    reference = await router.open("small", {"model": "small", "messages": msgs}, stream=False)
    expected = orjson.loads(await reference.read())["usage"]

    body = {"model": "small", "messages": msgs, "stream": True, "stream_options": {"include_usage": True}}
    resp = await router.open("small", body, stream=True, prompt_tokens_hint=123)
    _, chunks = await collect(resp)
    assert resp.usage is not None and resp.usage_estimated
    assert resp.usage.output == expected["completion_tokens"]
    assert resp.usage.input == 123
    [u] = usage_chunks(chunks)  # the client asked for usage: it gets the counted one before [DONE]
    assert u["usage"]["completion_tokens"] == expected["completion_tokens"]

    plain = await router.open("small", {**body, "stream_options": None}, stream=True, prompt_tokens_hint=5)
    _, chunks = await collect(plain)
    assert (
        usage_chunks(chunks) == []
        and plain.usage is not None
        and plain.usage.output == expected["completion_tokens"]
    )


async def test_reported_usage_wins_over_counting(
    demo: DemoModelHandle, router_factory: RouterFactory
) -> None:
    provider = vllm_provider("campus", demo.base_url, [priced("small", "demo-chat")], stream_usage="counted")
    router = await router_factory([provider])
    body = {"model": "small", "messages": [{"role": "user", "content": "abcdefgh"}], "stream": True}
    resp = await router.open("small", body, stream=True, prompt_tokens_hint=999)
    await collect(resp)
    assert resp.usage is not None and not resp.usage_estimated and resp.usage.input == 2


async def test_aclose_while_reading_stops_the_upstream_and_frees_the_slot(
    demo_factory: DemoFactory, router_factory: RouterFactory
) -> None:
    slow = await demo_factory(chunk_delay_ms=50, reply_tokens=30)
    router = await router_factory([vllm_provider("campus", slow.base_url, [priced("small", "demo-chat")])])
    resp = await router.open(
        "small", {"model": "small", "messages": [{"role": "user", "content": "x"}]}, stream=True
    )
    assert router.states()[0].inflight == 1
    first = await resp.__anext__()
    assert first.startswith(b"data: ")

    async def read_rest() -> list[bytes]:
        out = []
        try:
            async for blob in resp:
                out.append(blob)
        except UpstreamStreamError:
            pass
        return out

    reader = asyncio.create_task(read_rest())
    await asyncio.sleep(0.12)
    await resp.aclose()  # the client went away, as the gateway's disconnect watcher does
    rest = await asyncio.wait_for(reader, 5)
    assert b"[DONE]" not in b"".join(rest)
    assert router.states()[0].inflight == 0
    for _ in range(100):
        if slow.state.counts["client_disconnects"]:
            break
        await asyncio.sleep(0.05)
    assert slow.state.counts["client_disconnects"] == 1  # the upstream saw the disconnect and stopped
