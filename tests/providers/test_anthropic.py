"""OpenAI chat in, Anthropic Messages API on the wire (a double speaking its real event stream), OpenAI out."""

from __future__ import annotations

import math

import orjson
import pytest

from providers import InvalidRequest, UpstreamUnavailable
from tests.providers.anthropic_double import CACHE_READ, IMAGE_TOKENS, AnthropicDouble
from tests.providers.conftest import RouterFactory
from tests.providers.sse_client import collect, finish_reason, text_of, tool_calls_of, usage_chunks
from tests.providers.wire import png_data_url

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def claude(double: AnthropicDouble, **extra: object) -> list[dict[str, object]]:
    model = {
        "id": "claude",
        "upstream": "claude-sonnet-4-5",
        "vision": True,
        "max_output_tokens": 1024,
        **extra,
    }
    return [
        {
            "id": "anthropic",
            "type": "anthropic",
            "base_url": double.base_url,
            "api_key_env": "TEST_ANTHROPIC_KEY",
            "models": [model],
        }
    ]


async def test_stream_translates_text_and_usage(
    anthropic: AnthropicDouble, router_factory: RouterFactory
) -> None:
    router = await router_factory(claude(anthropic))
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the class"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 1.7,
        "stop": "END",
        "user": "s1",
    }
    resp = await router.open("claude", body, stream=True)
    _, chunks = await collect(resp)
    sent = anthropic.requests[-1]
    assert anthropic.headers[-1]["x-api-key"] and anthropic.headers[-1]["anthropic-version"]
    assert sent["model"] == "claude-sonnet-4-5"
    assert sent["system"] == [{"type": "text", "text": "You are terse."}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello to the class"}]}
    ]
    assert sent["max_tokens"] == 1024 and sent["stream"] is True
    assert sent["temperature"] == 1.0 and sent["stop_sequences"] == ["END"]
    assert sent["metadata"] == {"user_id": "s1"}
    assert text_of(chunks) == f"Anthropic double heard {len('Say hello to the class')} characters"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["id"] == "chatcmpl-msg_double01"
    assert finish_reason(chunks) == "stop"
    input_tokens = math.ceil(len("You are terse.Say hello to the class") / 4) + CACHE_READ
    [u] = usage_chunks(chunks)
    assert u["usage"]["prompt_tokens"] == input_tokens
    assert u["usage"]["prompt_tokens_details"]["cached_tokens"] == CACHE_READ
    assert resp.usage is not None
    assert (resp.usage.input, resp.usage.output, resp.usage.cached_input) == (input_tokens, 5, CACHE_READ)


async def test_usage_chunk_only_when_asked(anthropic: AnthropicDouble, router_factory: RouterFactory) -> None:
    router = await router_factory(claude(anthropic))
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await router.open("claude", body, stream=True)
    _, chunks = await collect(resp)
    assert usage_chunks(chunks) == []
    assert resp.usage is not None and resp.usage.output == 5


async def test_images_become_image_blocks(anthropic: AnthropicDouble, router_factory: RouterFactory) -> None:
    router = await router_factory(claude(anthropic))
    data_url = png_data_url(32, 16)
    body = {
        "model": "claude",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.edu/cat.jpg", "detail": "low"},
                    },
                ],
            }
        ],
    }
    resp = await router.open("claude", body, stream=False)
    data = orjson.loads(await resp.read())
    blocks = anthropic.requests[-1]["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": data_url.split(",", 1)[1]},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.edu/cat.jpg"}}
    assert data["object"] == "chat.completion"
    assert data["usage"]["prompt_tokens"] == math.ceil(len("Compare") / 4) + 2 * IMAGE_TOKENS + CACHE_READ
    assert resp.usage is not None and resp.usage.input == data["usage"]["prompt_tokens"]


async def test_streamed_tool_use_becomes_tool_call_deltas(
    anthropic: AnthropicDouble, router_factory: RouterFactory
) -> None:
    router = await router_factory(claude(anthropic))
    body = {
        "model": "claude",
        "messages": [{"role": "user", "content": "use a tool: weather in Paris"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stream": True,
    }
    resp = await router.open("claude", body, stream=True)
    _, chunks = await collect(resp)
    sent = anthropic.requests[-1]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    calls = tool_calls_of(chunks)
    assert calls == {0: {"id": "toolu_01", "name": "get_weather", "arguments": '{"city":"Paris"}'}}
    assert finish_reason(chunks) == "tool_calls"


async def test_tool_round_trip_history_is_valid_for_anthropic(
    anthropic: AnthropicDouble, router_factory: RouterFactory
) -> None:
    router = await router_factory(claude(anthropic))
    body = {
        "model": "claude",
        "messages": [
            {"role": "user", "content": "use a tool: weather in Paris"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "18C and sunny"},
            {"role": "user", "content": "and so?"},
        ],
        "tools": [WEATHER_TOOL],
    }
    resp = await router.open("claude", body, stream=False)
    assert resp.status == 200, await resp.read()
    data = orjson.loads(await resp.read())
    msgs = anthropic.requests[-1]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]  # tool result and next question merged
    assert msgs[1]["content"] == [
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert msgs[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": "18C and sunny",
    }
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_non_stream_tool_use(anthropic: AnthropicDouble, router_factory: RouterFactory) -> None:
    router = await router_factory(claude(anthropic))
    body = {
        "model": "claude",
        "messages": [{"role": "user", "content": "please use the tool"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    data = orjson.loads(await (await router.open("claude", body, stream=False)).read())
    assert anthropic.requests[-1]["tool_choice"] == {"type": "tool", "name": "get_weather"}
    msg = data["choices"][0]["message"]
    assert msg["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert data["choices"][0]["finish_reason"] == "tool_calls"


async def test_errors_are_translated_to_openai_shape(
    anthropic: AnthropicDouble, router_factory: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "wrong")
    router = await router_factory(claude(anthropic))
    resp = await router.open(
        "claude", {"model": "claude", "messages": [{"role": "user", "content": "x"}]}, stream=True
    )
    assert resp.status == 401
    assert orjson.loads(await resp.read()) == {
        "error": {
            "message": "invalid x-api-key",
            "type": "invalid_request_error",
            "param": None,
            "code": "authentication_error",
        }
    }


async def test_overloaded_stream_before_first_byte_is_an_upstream_failure(
    anthropic: AnthropicDouble, router_factory: RouterFactory
) -> None:
    anthropic.stream_error_first = True
    router = await router_factory(claude(anthropic))
    with pytest.raises(UpstreamUnavailable) as err:
        await router.open(
            "claude", {"model": "claude", "messages": [{"role": "user", "content": "x"}]}, stream=True
        )
    assert "overloaded_error" in err.value.message and err.value.status == 502


async def test_requests_anthropic_cannot_take_are_refused(
    anthropic: AnthropicDouble, router_factory: RouterFactory
) -> None:
    router = await router_factory(claude(anthropic))
    with pytest.raises(InvalidRequest):
        await router.open(
            "claude",
            {"model": "claude", "n": 2, "messages": [{"role": "user", "content": "x"}]},
            stream=False,
        )
    with pytest.raises(InvalidRequest):
        await router.open("claude", {"model": "claude", "input": "x"}, stream=False, endpoint="embeddings")
    assert anthropic.requests == []
