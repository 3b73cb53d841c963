"""What a model server an institution admin names can make the gateway do.

The attack: an admin (or a broken model server) answers the gateway's health probe with a /metrics body
of tens of megabytes; the gateway read it whole and parsed it character by character on its event loop,
stalling every institution it serves for seconds on each probe. And a provider's `headers` were written
into upstream requests as given: a value with CR/LF started new header lines (or a second request on a
pooled connection other institutions share), and names like Content-Length, Transfer-Encoding or Host
reframed or rerouted the request.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from admin_api.orgfile import OrgFileError, parse_document
from providers import upstream_errors
from providers.adapters.openai_compat import PassthroughStream
from providers.config import compile_deployments
from providers.router import Router
from tests.admin_api.conftest import Env, drop_env, make_env, stateu_document
from tests.security.test_provider_secrets import strict_settings
from tests.security.upstream_double import capture_server

SAMPLE = b"vllm:num_requests_running 3\nvllm:num_requests_waiting 1\n"


def _vllm(port: int) -> list[dict[str, object]]:
    return [{"id": "gpu", "type": "vllm", "base_url": f"http://127.0.0.1:{port}/v1",
             "models": [{"id": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}]  # fmt: skip


async def _probed_load(body: bytes) -> object:
    with capture_server() as upstream:
        upstream.answer(200, body, "text/plain")
        router = Router(compile_deployments(_vllm(upstream.port)))
        await router.start()  # probes every server once before it returns
        try:
            return next(iter(router._deployments.values())).server.load
        finally:
            await router.close()


async def test_a_normal_metrics_page_is_read() -> None:
    load = await _probed_load(SAMPLE)
    assert load is not None and (load.running, load.waiting) == (3.0, 1.0), load  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [600 * 1024, 30 * 1024 * 1024])
async def test_a_huge_metrics_page_fails_the_probe_unread(size: int) -> None:
    """Beyond 512 KiB the probe has failed: nothing of the page is parsed (before: read whole, parsed on the
    event loop, and its first lines taken as the server's load)."""
    load = await _probed_load(SAMPLE + b"vllm:" + b"a" * size)
    assert load is None


# -- provider headers: what an admin can make the gateway write into upstream requests ---------------


@pytest.fixture
async def strict_env(pg_url: str, redis_url: str) -> AsyncIterator[Env]:
    env = await make_env(strict_settings(pg_url, redis_url))
    try:
        yield env
    finally:
        await drop_env(env)


INJECTIONS = [
    {"X-Note": "a\r\nX-Injected: yes"},  # a second header line (or, after CRLFCRLF, a second request)
    {"X-Note": "a\nAuthorization: Bearer sk-literal"},  # a literal credential under a harmless name
    {"Content-Length": "0"},  # framing: the upstream reads the body as the next request
    {"Transfer-Encoding": "chunked"},
    {"Host": "internal.example"},
    {"Connection": "close"},
    {"Proxy-Authorization": "Basic eDp5"},
    {"X Bad Name": "v"},
    {"X-Title": "EduAiQ\n"},  # a final newline: `$` matched before it (YAML's `X-Title: |` writes one)
    {"X-Org\n": "a"},
    {"Content-Length\n": "0"},
]


@pytest.mark.parametrize("headers", INJECTIONS, ids=lambda h: next(iter(h)).replace(" ", "_"))
def test_the_institution_file_refuses_headers_that_split_or_reframe_a_request(
    headers: dict[str, str],
) -> None:
    inst = f"su{uuid.uuid4().hex[:10]}"
    doc = stateu_document(inst)
    doc["providers"].append({"id": "hdr", "type": "openai-compatible", "base_url": "https://c.example.com/v1",
                             "headers": headers,
                             "models": [{"id": "hdr-chat", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]})  # fmt: skip
    with pytest.raises(OrgFileError) as caught:
        parse_document(doc)
    where = f"providers[{len(doc['providers']) - 1}].headers"
    assert any(path.startswith(where) for path, _ in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("headers", INJECTIONS, ids=lambda h: next(iter(h)).replace(" ", "_"))
async def test_the_admin_api_refuses_them_too(strict_env: Env, headers: dict[str, str]) -> None:
    client = await strict_env.login("uadmin")
    response = await client.put("/api/v1/providers/hdr", json={
        "type": "openai-compatible", "base_url": "https://c.example.com/v1", "headers": headers})  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"], response.text


def test_a_plain_extra_header_is_still_sent() -> None:
    """The control: an ordinary header (an organisation id, a routing hint) reaches the upstream."""
    deployments = compile_deployments([{"id": "p", "type": "openai-compatible", "base_url": "https://c.example.com/v1",
                                        "headers": {"X-Org": "stateu", "X-Note": "a b\tc"},
                                        "models": [{"id": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}])  # fmt: skip
    assert dict(deployments[0].headers) == {"X-Org": "stateu", "X-Note": "a b\tc"}


# -- error messages: the scrubber's patterns run over a bounded text --------------------------------


def test_the_error_scrubber_never_runs_its_patterns_over_more_than_a_bounded_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the attack review: a 64 KB `a.a.a...1` message from an upstream's 4xx made the host-name
    patterns backtrack for minutes on the event loop (2.5 s at 10 KB). Now secrets are cut from the whole
    text (a plain replace) and the patterns see at most 2 x MAX_MESSAGE characters (and start only where a
    run starts, so even that prefix is linear). Counted, not timed: every pattern's input is recorded."""
    seen: list[int] = []

    class Counting:
        def __init__(self, pattern: re.Pattern[str]) -> None:
            self.pattern = pattern

        def sub(self, repl: object, text: str) -> str:
            seen.append(len(text))
            return self.pattern.sub(repl, text)  # type: ignore[arg-type]

    for name in ("_URL", "_BEARER", "_KEYLIKE", "_GOOGLE_KEY", "_IPV6", "_IPV4", "_HOST_PORT", "_DOTTED"):
        monkeypatch.setattr(upstream_errors, name, Counting(getattr(upstream_errors, name)))
    secret = "S3CRET-at-the-end-of-64k"
    message = "a." * 32_000 + "1 " + secret
    body = upstream_errors.public_error(400, orjson.dumps({"error": {"message": message}}), (secret,))
    assert seen and max(seen) <= 2 * upstream_errors.MAX_MESSAGE, max(seen)
    assert secret.encode() not in body


async def test_a_declared_variable_with_line_breaks_is_never_written_into_a_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator's variables are read at request time: one holding a line break (a header split in two)
    is not sent at all; a trailing newline, as a Kubernetes Secret made with --from-file has, is dropped."""
    monkeypatch.setenv("TEST_HDR_SPLIT", "ok\r\nX-Injected: yes")
    monkeypatch.setenv("TEST_KEY_NEWLINE", "sk-test-key-123\n")
    with capture_server() as upstream:
        upstream.answer(200, orjson.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))  # fmt: skip
        router = Router(compile_deployments([{
            "id": "p", "type": "openai-compatible", "base_url": upstream.url, "health_check": False,
            "api_key_env": "TEST_KEY_NEWLINE", "headers": {"X-Campus": "env:TEST_HDR_SPLIT"},
            "models": [{"id": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}]))  # fmt: skip
        await router.start()
        try:
            await router.open(
                "m", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, stream=False
            )
        finally:
            await router.close()
    (seen,) = upstream.requests
    assert "X-Injected" not in seen.headers and "X-Campus" not in seen.headers, seen.headers
    assert seen.headers.get("Authorization") == "Bearer sk-test-key-123", seen.headers


def test_an_error_event_keeps_its_usage_and_a_null_error_is_an_ordinary_chunk() -> None:
    """Found by the attack review: `"error": null` beside choices (an ordinary chunk some servers send) was
    replaced by the error sentence, losing the student's text; an error event that carried usage lost it
    to the bill (which fell back to an estimate)."""
    stream = PassthroughStream(include_usage_chunk=True)
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}],"error":null}\n\n'
    failed = (b'data: {"error":{"message":"worker at 10.1.2.3:8000 died"},'
              b'"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}\n\n')  # fmt: skip
    out = stream.feed(chunk + failed)
    assert out.startswith(chunk), out
    assert b"10.1.2.3" not in out and b"reported an error mid-answer" in out
    assert stream.usage is not None and (stream.usage.input, stream.usage.output) == (3, 5)
