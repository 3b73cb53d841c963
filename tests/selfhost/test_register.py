"""register() reads a running server's /v1/models and writes the org file's `providers:` entry for it."""

from __future__ import annotations

import pytest

from providers import compile_deployments
from selfhost.demo_model import DemoModelHandle, start_demo_model
from selfhost.register import RegisterError, provider_entry, register, v1_url


async def test_register_a_vllm_server_and_match_the_catalogue() -> None:
    # vLLM serves under the Hugging Face name unless --served-model-name is given
    server = await start_demo_model(models=["Qwen/Qwen2-VL-2B-Instruct", "my-finetune"], max_model_len=8192)
    try:
        found = await register(f"http://127.0.0.1:{server.port}/", probe_stream_usage=True)
    finally:
        await server.close()
    assert [m.id for m in found] == ["Qwen/Qwen2-VL-2B-Instruct", "my-finetune"]
    qwen, other = found
    assert qwen.server_kind == "vllm" and qwen.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert (qwen.catalogue_id, qwen.vision, qwen.image_tokens, qwen.max_model_len) == (
        "qwen2-vl-2b",
        True,
        "qwen2-vl",
        8192,
    )
    assert other.catalogue_id is None and not other.vision
    assert qwen.stream_usage == "reported"

    entry = provider_entry(
        "campus", found, input_per_mtok=0.02, output_per_mtok=0.04, api_key_env="CAMPUS_KEY"
    )
    assert entry["type"] == "vllm" and "stream_usage" not in entry
    assert entry["models"][0] == {
        "id": "qwen2-vl-2b",
        "upstream": "Qwen/Qwen2-VL-2B-Instruct",
        "vision": True,
        "price": {"input_per_mtok": 0.02, "output_per_mtok": 0.04},
        "max_output_tokens": 4096,
        "image_tokens": "qwen2-vl",
    }
    deps = compile_deployments([entry])  # what register writes is a valid providers: entry
    assert [d.id for d in deps] == ["campus/qwen2-vl-2b", "campus/my-finetune"]


async def test_a_server_without_stream_usage_is_marked_counted(demo: DemoModelHandle) -> None:
    demo.configure(stream_usage=False)
    found = await register(demo.base_url, probe_stream_usage=True)
    assert {m.stream_usage for m in found} == {"counted"}
    assert provider_entry("cpu", found, input_per_mtok=0, output_per_mtok=0)["stream_usage"] == "counted"


async def test_unreachable_or_wrong_servers_raise(demo: DemoModelHandle) -> None:
    port = demo.port
    await demo.kill()
    with pytest.raises(RegisterError, match="cannot reach"):
        await register(f"http://127.0.0.1:{port}")
    secured = await start_demo_model(api_key="k")
    try:
        with pytest.raises(RegisterError, match="HTTP 401"):
            await register(secured.base_url)
        assert [m.id for m in await register(secured.base_url, api_key="k")] == ["demo-chat", "demo-vision"]
    finally:
        await secured.close()


def test_urls_are_normalised_to_v1() -> None:
    assert v1_url("http://gpu01:8000") == v1_url("http://gpu01:8000/v1/") == "http://gpu01:8000/v1"
