"""Issue 17 item 7: a student's image URL must not make a campus model server fetch from inside the campus,
and no media part the budget estimate does not count (audio, video, files) reaches any model.

vLLM (and any OpenAI-compatible server run on campus) downloads `image_url` links itself, from its own
network: `http://169.254.169.254/...` reached the cloud metadata service through it. Self-hosted models
now take images inline only (data: URLs): a link gets a 400 saying so, and the model server is never
sent it. Commercial providers fetch links from their own networks and still get them.

The self-hosted and the commercial provider here are the same recording server on loopback, so what
each would have been sent is seen byte for byte.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from providers.adapters.openai_compat import OpenAICompatAdapter
from providers.config import compile_deployments
from providers.errors import InvalidRequest
from selfhost.serve import serve_command
from tests.gateway.harness import Stack, gateway_stack
from tests.security.upstream_double import Capture, Seen, capture_server

PRICE = {"input_per_mtok": 1, "output_per_mtok": 1}
METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "a cat"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})  # fmt: skip


def _png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Capture]:
    with capture_server() as c:
        c.answer(200, ANSWER)
        yield c


@pytest.fixture(scope="module")
def stack(
    pg_server_url: str,
    redis_url: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Capture,
) -> Iterator[Stack]:
    def add_providers(doc: dict[str, Any]) -> None:
        doc["providers"] += [
            {"id": "campus", "type": "vllm", "base_url": upstream.url, "health_check": False,
             "models": [{"id": "campus-vision", "upstream": "qwen2-vl", "vision": True, "price": PRICE}]},
            {"id": "cloud", "type": "openai", "base_url": upstream.url + "/cloud", "api_key_env": "TEST_CLOUD_KEY",
             "models": [{"id": "cloud-vision", "upstream": "gpt-4o", "vision": True, "price": PRICE}]},
        ]  # fmt: skip
        doc["units"][0]["models"] += ["campus-vision", "cloud-vision"]

    with gateway_stack(
        pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("images"), mutate=add_providers,
        extra_env={"TEST_CLOUD_KEY": "k", "EDUAIQ_PROVIDER_SECRET_VARS": "TEST_CLOUD_KEY"},
    ) as s:  # fmt: skip
        yield s


def _posts(upstream: Capture) -> list[Seen]:
    """What the model server was asked (a vllm-type provider also scrapes its /metrics in the background)."""
    return [r for r in upstream.requests if r.method == "POST"]


def _chat(stack: Stack, model: str, url: str) -> httpx.Response:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    return httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {stack.key('alice')}"},
                      json={"model": model, "messages": [{"role": "user", "content": content}]})  # fmt: skip


@pytest.mark.parametrize("model", ["campus-vision", "demo-vision"])
@pytest.mark.parametrize("url", [METADATA, "https://example.edu/cat.png", "http://[fd00:ec2::254]/latest"])
def test_self_hosted_models_refuse_image_links(stack: Stack, upstream: Capture, model: str, url: str) -> None:
    before = len(_posts(upstream))
    response = _chat(stack, model, url)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "data: URL" in error["message"]
    assert len(_posts(upstream)) == before  # the model server was sent nothing
    assert "169.254" not in upstream.everything_received()


def test_self_hosted_models_take_inline_images(stack: Stack, upstream: Capture) -> None:
    image = _png()
    before = len(_posts(upstream))
    response = _chat(stack, "campus-vision", image)
    assert response.status_code == 200, response.text
    assert len(_posts(upstream)) == before + 1 and image in _posts(upstream)[-1].body.decode()
    assert _chat(stack, "demo-vision", image).status_code == 200


def test_commercial_providers_still_get_links(stack: Stack, upstream: Capture) -> None:
    response = _chat(stack, "cloud-vision", "https://example.edu/cat.png")
    assert response.status_code == 200, response.text
    assert b"https://example.edu/cat.png" in _posts(upstream)[-1].body


# -- every other media part: audio, video, files, untyped parts ------------------------------------------

WAV = "data:audio/wav;base64,UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="
# Parts vLLM accepts and fetches or decodes itself, none of which the budget estimate counts.
MEDIA_PARTS: dict[str, dict[str, Any]] = {
    "video_url": {"type": "video_url", "video_url": {"url": METADATA}},
    "audio_url": {"type": "audio_url", "audio_url": {"url": METADATA}},
    "input_audio": {"type": "input_audio", "input_audio": {"data": WAV.split(",")[1], "format": "wav"}},
    "input_image": {"type": "input_image", "image_url": METADATA},
    "file": {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
    },
    # No type: vLLM infers it from the key and fetches; the gateway's request check names the missing 'type'.
    "type": {"image_url": {"url": METADATA}},
}


def _chat_part(stack: Stack, model: str, part: dict[str, Any]) -> httpx.Response:
    content = [{"type": "text", "text": "what is this?"}, part]
    return httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {stack.key('alice')}"},
                      json={"model": model, "messages": [{"role": "user", "content": content}]})  # fmt: skip


@pytest.mark.parametrize("kind", sorted(MEDIA_PARTS))
@pytest.mark.parametrize("model", ["campus-vision", "cloud-vision"])
def test_media_parts_other_than_images_are_refused_naming_the_part(
    stack: Stack, upstream: Capture, model: str, kind: str
) -> None:
    """Self-hosted: vLLM would fetch the link from inside the campus (SSRF). Commercial: the provider
    would bill audio, video or a file the reservation never counted. Either way: 400, nothing sent."""
    before = len(_posts(upstream))
    response = _chat_part(stack, model, MEDIA_PARTS[kind])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert f"'{kind}'" in error["message"], error
    assert len(_posts(upstream)) == before
    assert "169.254" not in upstream.everything_received()


def test_vllm_embeddings_with_messages_take_no_image_links() -> None:
    """vLLM's embeddings endpoint takes chat-style `messages` too, and fetches their links the same way."""
    (dep,) = compile_deployments([{"id": "gpu", "type": "vllm", "base_url": "https://gpu.example.edu/v1",
                                   "models": [{"id": "embed", "price": PRICE}]}])  # fmt: skip
    body = {"model": "embed", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": METADATA}}]}]}  # fmt: skip
    with pytest.raises(InvalidRequest, match="data: URL"):
        OpenAICompatAdapter().prepare(dep, body, stream=False, max_tokens=None, endpoint="embeddings")
    body["messages"][0]["content"] = [{"type": "text", "text": "fine"}]
    OpenAICompatAdapter().prepare(dep, body, stream=False, max_tokens=None, endpoint="embeddings")


@pytest.mark.parametrize("model", ["qwen2-vl-7b", "llama-3.1-8b"])
def test_vllm_started_by_eduaiq_fetches_no_remote_media(model: str) -> None:
    """The other half: the vLLM `eduaiq selfhost serve` starts accepts media links from no domain (as the
    chart's does), so a link that reached it some other way is not fetched either."""
    cmd = serve_command(model, extra_args=["--max-num-seqs", "8"])
    i = cmd.index("--allowed-media-domains")
    assert cmd[i + 1] == "eduaiq.invalid"
    assert "--allowed-local-media-path" not in cmd
