"""Conformance with the official `openai` SDK: whatever a client does with OpenAI works here."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os

import httpx
import openai
import pytest
from PIL import Image

from tests.gateway.harness import Stack


def client(stack: Stack, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=stack.key(who), max_retries=0)


def png_data_url(w: int = 64, h: int = 48) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


HELLO = [{"role": "user", "content": "Hello, who are you?"}]


def test_non_stream_chat(stack: Stack) -> None:
    r = client(stack).chat.completions.create(model="demo-chat", messages=HELLO)  # type: ignore[arg-type]
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def test_stream_chat_without_and_with_usage_chunk(stack: Stack) -> None:
    c = client(stack)
    chunks = list(c.chat.completions.create(model="demo-chat", messages=HELLO, stream=True))  # type: ignore[arg-type]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert all(ch.usage is None for ch in chunks), "usage chunk sent although the client did not ask"
    asked = list(c.chat.completions.create(model="demo-chat", messages=HELLO, stream=True,  # type: ignore[arg-type]
                                           stream_options={"include_usage": True}))  # fmt: skip
    assert asked[-1].usage is not None and asked[-1].choices == []
    assert asked[-1].usage.completion_tokens == len(
        [c for c in asked if c.choices and c.choices[0].delta.content]
    )


def test_async_client_stream_and_non_stream(stack: Stack) -> None:
    async def run() -> tuple[str, str]:
        ac = openai.AsyncOpenAI(base_url=stack.base_url + "/v1", api_key=stack.key("bob"), max_retries=0)
        r = await ac.chat.completions.create(model="demo-chat", messages=HELLO)  # type: ignore[arg-type]
        parts = []
        async for ch in await ac.chat.completions.create(model="demo-chat", messages=HELLO, stream=True):  # type: ignore[arg-type]
            if ch.choices and ch.choices[0].delta.content:
                parts.append(ch.choices[0].delta.content)
        await ac.close()
        return r.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(run())
    assert whole and streamed


def test_vision_image_is_accepted_and_counted(stack: Stack) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                             {"type": "image_url", "image_url": {"url": png_data_url(), "detail": "high"}}]}]  # fmt: skip
    text_only = client(stack).chat.completions.create(
        model="demo-vision", messages=[{"role": "user", "content": "What is in this picture?"}]
    )  # type: ignore[arg-type]
    r = client(stack).chat.completions.create(model="demo-vision", messages=messages)  # type: ignore[arg-type]
    assert r.usage is not None and text_only.usage is not None
    assert r.usage.prompt_tokens > text_only.usage.prompt_tokens  # the image was counted upstream too


def test_image_to_text_only_model_is_a_clear_400(stack: Stack) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client(stack).chat.completions.create(model="demo-chat", messages=messages)  # type: ignore[arg-type]
    assert "does not accept images" in str(err.value)


def test_malformed_and_oversized_images_say_why(stack: Stack) -> None:
    bad = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!notbase64"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError) as err:
        client(stack).chat.completions.create(model="demo-vision", messages=bad)  # type: ignore[arg-type]
    assert "image" in str(err.value)
    noise = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))  # incompressible: > 200 kB as PNG
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    big = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    with pytest.raises(openai.APIStatusError) as err2:
        client(stack).chat.completions.create(model="demo-vision", messages=big)  # type: ignore[arg-type]
    assert err2.value.status_code in (400, 413)
    assert "image" in str(err2.value)


def test_embeddings(stack: Stack) -> None:
    r = client(stack).embeddings.create(model="demo-chat", input=["one", "two"])
    assert len(r.data) == 2 and len(r.data[0].embedding) > 8
    assert r.usage.prompt_tokens > 0


def test_completions(stack: Stack) -> None:
    r = client(stack).completions.create(model="demo-chat", prompt="Once upon a time", max_tokens=8)
    assert r.choices[0].text


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
ASK_TOOL = [{"role": "user", "content": "Please call get_weather for Paris"}]


def test_tools_non_stream_and_stream(stack: Stack) -> None:
    c = client(stack)
    r = c.chat.completions.create(model="demo-chat", messages=ASK_TOOL, tools=TOOLS)  # type: ignore[arg-type]
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    args = ""
    for ch in c.chat.completions.create(model="demo-chat", messages=ASK_TOOL, tools=TOOLS, stream=True):  # type: ignore[arg-type]
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            args += tc.function.arguments or "" if tc.function else ""
    assert "city" in json.loads(args)


def test_models_lists_only_the_units_models(stack: Stack) -> None:
    assert [m.id for m in client(stack).models.list()] == ["demo-chat", "demo-vision"]
    assert [m.id for m in client(stack, "rita").models.list()] == ["demo-chat"]


def test_me_reports_the_whole_path(stack: Stack) -> None:
    r = httpx.get(stack.base_url + "/v1/me", headers={"Authorization": f"Bearer {stack.key('alice')}"})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == "alice" and body["unit"]["id"] == "cs101"
    assert "budget" in body


@pytest.mark.parametrize("path", ["/v1//chat/completions", "/chat/completions"])
def test_base_url_typos_reach_the_same_endpoint(stack: Stack, path: str) -> None:
    r = httpx.post(stack.base_url + path, headers={"Authorization": f"Bearer {stack.key('alice')}"},
                   json={"model": "demo-chat", "messages": HELLO})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
