"""OpenAI chat in, Gemini generateContent / streamGenerateContent?alt=sse on the wire, OpenAI out."""

from __future__ import annotations

import math

import orjson
import pytest

from tests.providers.conftest import RouterFactory
from tests.providers.gemini_double import CACHED, IMAGE_TOKENS, GeminiDouble
from tests.providers.sse_client import collect, finish_reason, text_of, tool_calls_of, usage_chunks
from tests.providers.wire import png_data_url

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_course",
        "description": "Find a course",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"code": {"type": "string"}},
            "required": ["code"],
            "additionalProperties": False,
        },
    },
}


def gem(double: GeminiDouble) -> list[dict[str, object]]:
    return [
        {
            "id": "google",
            "type": "gemini",
            "base_url": double.base_url,
            "api_key_env": "TEST_GEMINI_KEY",
            "models": [{"id": "gemini", "upstream": "gemini-2.5-flash", "vision": True}],
        }
    ]


async def test_stream_translates_text_images_and_usage(
    gemini: GeminiDouble, router_factory: RouterFactory
) -> None:
    router = await router_factory(gem(gemini))
    url = png_data_url(20, 20)
    body = {
        "model": "gemini",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            },
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.2,
    }
    resp = await router.open("gemini", body, stream=True)
    _, chunks = await collect(resp)
    assert gemini.paths[-1] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    sent = gemini.requests[-1]
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "What is this?"},
                {"inlineData": {"mimeType": "image/png", "data": url.split(",", 1)[1]}},
            ],
        }
    ]
    assert sent["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.2}
    assert text_of(chunks) == f"Gemini double heard {len('What is this?')} characters"
    assert finish_reason(chunks) == "stop"
    prompt = math.ceil(len("Be brief.What is this?") / 4) + IMAGE_TOKENS
    [u] = usage_chunks(chunks)
    assert u["usage"]["prompt_tokens"] == prompt and u["usage"]["completion_tokens"] == 5
    assert resp.usage is not None
    assert (resp.usage.input, resp.usage.output, resp.usage.image, resp.usage.cached_input) == (
        prompt,
        5,
        IMAGE_TOKENS,
        CACHED,
    )


async def test_length_finish_and_non_stream(gemini: GeminiDouble, router_factory: RouterFactory) -> None:
    router = await router_factory(gem(gemini))
    body = {"model": "gemini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    resp = await router.open("gemini", body, stream=False)
    data = orjson.loads(await resp.read())
    assert gemini.paths[-1] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert data["choices"][0]["message"]["content"] == "Gemini double"
    assert data["choices"][0]["finish_reason"] == "length"
    assert resp.usage is not None and resp.usage.output == 2


async def test_tools_stream_as_tool_calls_and_schema_is_cleaned(
    gemini: GeminiDouble, router_factory: RouterFactory
) -> None:
    router = await router_factory(gem(gemini))
    body = {
        "model": "gemini",
        "messages": [{"role": "user", "content": "use a tool to find CS101"}],
        "tools": [TOOL],
        "tool_choice": "auto",
        "stream": True,
    }
    resp = await router.open("gemini", body, stream=True)
    assert resp.status == 200, await resp.read()
    _, chunks = await collect(resp)
    decl = gemini.requests[-1]["tools"][0]["functionDeclarations"][0]
    assert decl["parameters"] == {
        "type": "object",
        "properties": {"code": {"type": "string"}},
        "required": ["code"],
    }
    assert gemini.requests[-1]["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    calls = tool_calls_of(chunks)
    assert calls[0]["name"] == "lookup_course" and orjson.loads(calls[0]["arguments"]) == {"code": "Paris"}
    assert finish_reason(chunks) == "tool_calls"


async def test_tool_results_carry_the_function_name(
    gemini: GeminiDouble, router_factory: RouterFactory
) -> None:
    router = await router_factory(gem(gemini))
    body = {
        "model": "gemini",
        "messages": [
            {"role": "user", "content": "use a tool to find CS101"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "lookup_course", "arguments": '{"code":"CS101"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "Intro to Programming"},
        ],
        "tools": [TOOL],
    }
    resp = await router.open("gemini", body, stream=False)
    assert resp.status == 200, await resp.read()
    contents = gemini.requests[-1]["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "lookup_course", "args": {"code": "CS101"}}}],
    }
    assert contents[2]["parts"][0]["functionResponse"] == {
        "name": "lookup_course",
        "response": {"content": "Intro to Programming"},
    }


async def test_errors_are_translated(
    gemini: GeminiDouble, router_factory: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_GEMINI_KEY", "bad")
    router = await router_factory(gem(gemini))
    resp = await router.open(
        "gemini", {"model": "gemini", "messages": [{"role": "user", "content": "x"}]}, stream=True
    )
    assert resp.status == 403
    err = orjson.loads(await resp.read())["error"]
    assert err["code"] == "PERMISSION_DENIED" and "API key not valid" in err["message"]
