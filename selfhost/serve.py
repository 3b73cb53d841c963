"""The `vllm serve` command line for a catalogue model, and launching it where vLLM is installed.

Flags follow vLLM >= 0.11 (JSON values for --limit-mm-per-prompt and --mm-processor-kwargs, and
--allowed-media-domains, which older versions refuse at start rather than fetch any link).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence

from selfhost.catalogue import load_catalogue

# vLLM fetches media links in requests itself, from the network it runs in (169.254.169.254, campus
# services). The gateway sends it images inline only (data: URLs, which no domain list restricts); vLLM
# fetches http(s) media only from the domains listed, and `.invalid` (RFC 6761) is no host at all. No
# --allowed-local-media-path either: local files stay off. Redirects are not followed.
NO_REMOTE_MEDIA = ["--allowed-media-domains", "eduaiq.invalid"]
NO_MEDIA_REDIRECTS = {"VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}


class VllmNotInstalled(RuntimeError):
    """vLLM is not on this machine; the message says so and gives the command to run elsewhere."""


def serve_command(
    model_id: str,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    gpu: str | None = None,
    tensor_parallel_size: int | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    api_key: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """argv for `vllm serve` with the model's profile; served under its catalogue id.

    `gpu` (a catalogue GPU name) switches bfloat16 to float16 on GPUs without
    bf16 (T4). `api_key` is passed as vLLM's --api-key so the gateway's
    `api_key_env` secret protects the replica. Remote media are off (`NO_REMOTE_MEDIA`).
    """
    cat = load_catalogue()
    m = cat.model(model_id)
    dtype = m.dtype
    if gpu is not None and dtype == "bfloat16" and not cat.gpu(gpu).bf16:
        dtype = "float16"
    cmd = [
        "vllm",
        "serve",
        m.hf_repo,
        "--served-model-name",
        m.id,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len or m.max_model_len),
        "--gpu-memory-utilization",
        str(gpu_memory_utilization or m.gpu_memory_utilization),
        "--tensor-parallel-size",
        str(tensor_parallel_size or m.tensor_parallel_size),
    ]
    if m.limit_mm_per_prompt:
        cmd += ["--limit-mm-per-prompt", json.dumps(m.limit_mm_per_prompt, separators=(",", ":"))]
    if m.mm_processor_kwargs:
        cmd += ["--mm-processor-kwargs", json.dumps(m.mm_processor_kwargs, separators=(",", ":"))]
    if m.trust_remote_code:
        cmd.append("--trust-remote-code")
    if m.chat_template:
        cmd += ["--chat-template", m.chat_template]
    cmd += NO_REMOTE_MEDIA
    cmd += list(m.extra_args)
    if api_key:
        cmd += ["--api-key", api_key]
    cmd += list(extra_args)
    return cmd


def vllm_available() -> bool:
    return shutil.which("vllm") is not None or importlib.util.find_spec("vllm") is not None


def serve(model_id: str, **options: object) -> int:
    """Run vLLM in the foreground with the model's profile; returns its exit code.

    Raises VllmNotInstalled (with the exact command) where vLLM is not installed,
    e.g. on a laptop or a CPU-only CI machine.
    """
    cmd = serve_command(model_id, **options)  # type: ignore[arg-type]
    if not vllm_available():
        raise VllmNotInstalled(
            "vLLM is not installed on this machine (it needs an NVIDIA GPU: pip install vllm). "
            f"On a GPU host run:\n  VLLM_MEDIA_URL_ALLOW_REDIRECTS=0 {shlex.join(cmd)}"
        )
    if shutil.which("vllm") is None:
        cmd = ["python", "-m", "vllm.entrypoints.cli.main", *cmd[1:]]
    return subprocess.call(cmd, env={**os.environ, **NO_MEDIA_REDIRECTS})
