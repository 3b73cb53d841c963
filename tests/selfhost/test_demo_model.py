"""The demo model speaks OpenAI's wire protocol (and vLLM's /metrics) with usage that follows the request."""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfhost.demo_model import OWNED_BY, DemoModelHandle
from selfhost.demo_replies import DEMO_IMAGE_RULE, embedding, reply_length
from tests.providers.wire import png_data_url


async def post(
    http: aiohttp.ClientSession, demo: DemoModelHandle, path: str, body: dict[str, Any]
) -> tuple[int, bytes]:
    async with http.post(demo.base_url + path, json=body) as r:
        return r.status, await r.read()


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    return raw[:-2].split(b"\n\n")


async def test_models_are_named_demo(demo: DemoModelHandle, http: aiohttp.ClientSession) -> None:
    async with http.get(demo.base_url + "/models") as r:
        data = await r.json()
    assert [m["id"] for m in data["data"]] == ["demo-chat", "demo-vision"]
    assert all("demo" in m["id"] and m["owned_by"] == OWNED_BY == "eduaiq-demo" for m in data["data"])


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(text=st.text(min_size=0, max_size=400), max_tokens=st.one_of(st.none(), st.integers(1, 40)))
async def test_usage_follows_the_request(
    demo: DemoModelHandle, http: aiohttp.ClientSession, text: str, max_tokens: int | None
) -> None:
    body: dict[str, Any] = {
        "model": "demo-chat",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}],
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    status, raw = await post(http, demo, "/chat/completions", body)
    data = orjson.loads(raw)
    assert status == 200
    assert data["usage"]["prompt_tokens"] == math.ceil((3 + len(text)) / 4)
    reply = data["choices"][0]["message"]["content"]
    words = len(reply.split())
    want = reply_length(text, None)
    assert 8 <= want <= 32
    assert data["usage"]["completion_tokens"] == words == min(max_tokens or 64, want)
    assert data["choices"][0]["finish_reason"] == ("length" if words < want else "stop")
    # the same request answers the same way
    assert (
        orjson.loads((await post(http, demo, "/chat/completions", body))[1])["choices"][0]["message"][
            "content"
        ]
        == reply
    )


async def test_stream_format_and_usage_chunk(demo: DemoModelHandle, http: aiohttp.ClientSession) -> None:
    body = {
        "model": "demo-chat",
        "messages": [{"role": "user", "content": "stream please"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 5,
    }
    async with http.post(demo.base_url + "/chat/completions", json=body) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        raw = await r.read()
    events = sse_events(raw)
    assert all(e.startswith(b"data: ") for e in events) and events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 5 and chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 5,
        "total_tokens": 9,
    }
    # without include_usage: no usage chunk
    body.pop("stream_options")
    async with http.post(demo.base_url + "/chat/completions", json=body) as r:
        assert b'"usage"' not in await r.read()


async def test_images_count_by_the_qwen2_vl_rule(demo: DemoModelHandle, http: aiohttp.ClientSession) -> None:
    url = png_data_url(800, 600)
    body = {
        "model": "demo-vision",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }
    status, raw = await post(http, demo, "/chat/completions", body)
    assert status == 200
    assert orjson.loads(raw)["usage"]["prompt_tokens"] == math.ceil(
        len("describe") / 4
    ) + DEMO_IMAGE_RULE.count(800, 600, "auto")
    bad = {
        "model": "demo-vision",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
            }
        ],
    }
    status, raw = await post(http, demo, "/chat/completions", bad)
    assert status == 400 and b"could not be read" in raw


async def test_tool_calls_when_tools_are_given_and_the_prompt_asks(
    demo: DemoModelHandle, http: aiohttp.ClientSession
) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "find_room",
            "parameters": {
                "type": "object",
                "properties": {"building": {"type": "string"}, "floor": {"type": "integer"}},
                "required": ["building", "floor"],
            },
        },
    }
    asks = {
        "model": "demo-chat",
        "messages": [{"role": "user", "content": "call find_room for me"}],
        "tools": [tool],
    }
    data = orjson.loads((await post(http, demo, "/chat/completions", asks))[1])
    call = data["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "find_room" and orjson.loads(call["arguments"]) == {"building": "demo", "floor": 1}
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    chat = {**asks, "messages": [{"role": "user", "content": "just say hello"}]}
    assert orjson.loads((await post(http, demo, "/chat/completions", chat))[1])["choices"][0]["message"][
        "content"
    ]
    none = {**asks, "tool_choice": "none"}
    assert (
        "tool_calls"
        not in orjson.loads((await post(http, demo, "/chat/completions", none))[1])["choices"][0]["message"]
    )


async def test_completions_and_embeddings(demo: DemoModelHandle, http: aiohttp.ClientSession) -> None:
    status, raw = await post(
        http, demo, "/completions", {"model": "demo-chat", "prompt": "The quick brown", "max_tokens": 4}
    )
    data = orjson.loads(raw)
    assert (
        status == 200 and len(data["choices"][0]["text"].split()) == 4 == data["usage"]["completion_tokens"]
    )
    status, raw = await post(
        http, demo, "/embeddings", {"model": "demo-chat", "input": ["a", "b", "a"], "dimensions": 8}
    )
    vecs = [d["embedding"] for d in orjson.loads(raw)["data"]]
    assert vecs[0] == vecs[2] != vecs[1] and len(vecs[0]) == 8
    assert math.isclose(sum(v * v for v in vecs[0]), 1.0)
    assert vecs[0] == pytest.approx(embedding("a", 8))


async def test_metrics_speak_vllm_with_settable_load(
    demo: DemoModelHandle, http: aiohttp.ClientSession
) -> None:
    demo.set_load(running=3, waiting=2, kv_cache=0.5)
    async with http.get(f"http://127.0.0.1:{demo.port}/metrics") as r:
        text = await r.text()
    assert 'vllm:num_requests_running{model_name="demo-chat"} 3.0' in text
    assert 'vllm:num_requests_waiting{model_name="demo-chat"} 2.0' in text
    assert 'vllm:kv_cache_usage_perc{model_name="demo-chat"} 0.5' in text
    async with http.post(f"http://127.0.0.1:{demo.port}/demo/admin", json={"load": {"running": 0}}) as r:
        assert (await r.json())["load"]["running"] == 0


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_admin_faults(demo: DemoModelHandle, http: aiohttp.ClientSession, status: int) -> None:
    demo.fail(status, count=2)
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "x"}]}
    assert [(await post(http, demo, "/chat/completions", body))[0] for _ in range(3)] == [status, status, 200]


async def test_slow_and_dropped_responses(demo: DemoModelHandle, http: aiohttp.ClientSession) -> None:
    demo.fail(mode="drop", count=1)
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(aiohttp.ClientError):
        await post(http, demo, "/chat/completions", body)
    demo.fail(mode="hang", count=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await post(http, demo, "/chat/completions", body)
    assert (await post(http, demo, "/chat/completions", body))[0] == 200


async def test_unknown_model_and_bad_json(demo: DemoModelHandle, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, demo, "/chat/completions", {"model": "gpt-4o", "messages": []})
    assert status == 404 and orjson.loads(raw)["error"]["message"] == "The model `gpt-4o` does not exist."
    async with http.post(demo.base_url + "/chat/completions", data=b"{not json") as r:
        assert r.status == 400


async def test_runs_as_a_module(http: aiohttp.ClientSession) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "selfhost.demo_model", "--port", str(port), "--reply-tokens", "3",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert f"http://127.0.0.1:{port}/v1" in line.decode()
        async with http.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
        ) as r:
            assert (await r.json())["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        await proc.wait()
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "selfhost.demo_model", "--port", str(port), "--models", "gpt-4o",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await bad.communicate()
    assert bad.returncode != 0 and b"must contain 'demo'" in err
