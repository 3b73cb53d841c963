"""The catalogue's vLLM profiles, the serve command built from them, and the capacity planner."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.images import RULES
from selfhost.catalogue import CatalogueError, load_catalogue
from selfhost.plan import plan
from selfhost.serve import VllmNotInstalled, serve, serve_command

REQUIRED = {
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    "internvl3-8b": "OpenGVLab/InternVL3-8B",
    "llama-3.2-11b-vision": "meta-llama/Llama-3.2-11B-Vision-Instruct",
    "molmo-7b-d": "allenai/Molmo-7B-D-0924",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "deepseek-r1-distill-qwen-7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
}


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_the_required_models_are_there_with_full_profiles() -> None:
    cat = load_catalogue()
    for model_id, repo in REQUIRED.items():
        m = cat.model(model_id)
        assert m.hf_repo == repo
        assert m.gpu_memory_gb >= m.weights_gb > 0
        assert m.max_model_len > 0 and 0 < m.gpu_memory_utilization <= 1
        if m.vision:
            assert m.limit_mm_per_prompt and m.limit_mm_per_prompt["image"] >= 1
            assert m.image_tokens is not None and m.image_tokens.rule in RULES
    assert cat.model("OpenGVLab/InternVL3-8B").id == "internvl3-8b"
    with pytest.raises(CatalogueError, match="qwen2-vl-2b"):
        cat.model("no-such-model")


def test_serve_command_carries_the_profile() -> None:
    cmd = serve_command("qwen2-vl-7b", port=8100)
    assert cmd[:3] == ["vllm", "serve", "Qwen/Qwen2-VL-7B-Instruct"]
    assert flag(cmd, "--served-model-name") == "qwen2-vl-7b"
    assert flag(cmd, "--port") == "8100"
    assert flag(cmd, "--dtype") == "bfloat16"
    assert flag(cmd, "--max-model-len") == "8192"
    assert flag(cmd, "--gpu-memory-utilization") == "0.9"
    assert flag(cmd, "--tensor-parallel-size") == "1"
    assert json.loads(flag(cmd, "--limit-mm-per-prompt")) == {"image": 4}
    assert json.loads(flag(cmd, "--mm-processor-kwargs"))["max_pixels"] == 1003520
    assert "--trust-remote-code" not in cmd


def test_model_specific_needs() -> None:
    assert "--trust-remote-code" in serve_command("internvl3-8b")
    assert "--trust-remote-code" in serve_command("molmo-7b-d")
    llama = serve_command("llama-3.1-8b")
    assert flag(llama, "--chat-template").endswith("tool_chat_template_llama3.1_json.jinja")
    assert flag(llama, "--tool-call-parser") == "llama3_json"
    assert flag(serve_command("deepseek-r1-distill-qwen-7b"), "--reasoning-parser") == "deepseek_r1"
    assert "--enforce-eager" in serve_command("llama-3.2-11b-vision")
    assert "--limit-mm-per-prompt" not in serve_command("qwen2.5-7b")
    t4 = serve_command("qwen2-vl-2b", gpu="T4-16GB", tensor_parallel_size=2, api_key="s3cret")
    assert flag(t4, "--dtype") == "float16"  # no bf16 on a T4
    assert flag(t4, "--tensor-parallel-size") == "2" and flag(t4, "--api-key") == "s3cret"


def test_serve_says_plainly_when_vllm_is_missing() -> None:
    if shutil.which("vllm"):
        pytest.skip("vLLM is installed here")
    with pytest.raises(VllmNotInstalled, match="vLLM is not installed") as err:
        serve("qwen2.5-7b")
    assert "vllm serve Qwen/Qwen2.5-7B-Instruct" in str(err.value)


def test_plan_raises_tensor_parallelism_on_small_gpus() -> None:
    small = plan(100, 10_000, "llama-3.2-11b-vision", gpu="L4-24GB")
    assert small.tensor_parallel_size == 2 and small.gpus == small.replicas * 2
    big = plan(100, 10_000, "llama-3.2-11b-vision", gpu="A100-80GB")
    assert big.tensor_parallel_size == 1 and big.gpus == 1
    assert any("tensor parallel" in a for a in small.assumptions)
    with pytest.raises(CatalogueError, match="A100-80GB"):
        plan(1, 1, "qwen2.5-7b", gpu="TPU")
    with pytest.raises(ValueError):
        plan(-1, 1, "qwen2.5-7b")


@given(
    st.integers(0, 200_000),
    st.integers(0, 200_000),
    st.integers(0, 100_000),
    st.sampled_from(sorted(REQUIRED)),
)
def test_more_demand_never_needs_fewer_gpus(users: int, extra: int, tokens: int, model: str) -> None:
    a = plan(users, tokens, model)
    b = plan(users + extra, tokens, model)
    assert 1 <= a.replicas <= b.replicas and a.gpus <= b.gpus
    assert (
        b.peak_tokens_per_second <= b.replica_tokens_per_second * b.replicas * 0.7 + 1
    )  # sized for 70% at peak


def test_faster_gpus_need_no_more_replicas() -> None:
    slow = plan(20_000, 50_000, "qwen2.5-7b", gpu="A10G-24GB")
    fast = plan(20_000, 50_000, "qwen2.5-7b", gpu="H100-80GB")
    assert fast.replicas < slow.replicas
