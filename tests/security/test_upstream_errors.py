"""Issue 17 item 9 (and the tail of item 1): what an upstream says when it fails reaches the gateway's log,
not the student.

A real gateway routes a model to a hostile upstream on loopback that answers what each test sets: a 4xx
whose message carries internal URLs, host:port pairs, addresses, tokens and the provider's own key; a
5xx with a stack-trace excerpt; a server that does not answer at all. The student gets the OpenAI error
shape with a clean message: for a 4xx (the student's own mistake, e.g. a prompt too long) the upstream's
message text minus everything that locates or authenticates anything; for the rest a sentence of the
gateway's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from cli.services.process import free_port
from tests.gateway.harness import Stack, gateway_stack
from tests.security.upstream_double import Capture, capture_server

PROVIDER_KEY = "sk-hostile-provider-key-31337"
HEADER_SECRET = "CampusSecretValue77"  # an `env:` header's value: the server may echo what it was sent
PRICE = {"input_per_mtok": 1, "output_per_mtok": 1}


@pytest.fixture(scope="module")
def hostile() -> Iterator[Capture]:
    with capture_server() as c:
        yield c


@pytest.fixture(scope="module")
def stack(
    pg_server_url: str,
    redis_url: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    hostile: Capture,
) -> Iterator[Stack]:
    dead_port = free_port()  # nothing listens there: a connect error naming 127.0.0.1:<port>

    def add_providers(doc: dict[str, Any]) -> None:
        doc["providers"] += [
            {"id": "hostile", "type": "openai-compatible", "base_url": hostile.url, "health_check": False,
             "api_key_env": "TEST_HOSTILE_KEY", "headers": {"X-Campus-Token": "env:TEST_HOSTILE_HEADER"},
             "models": [{"id": "hostile-chat", "price": PRICE}]},
            {"id": "gone", "type": "openai-compatible", "base_url": f"http://127.0.0.1:{dead_port}/v1",
             "health_check": False, "models": [{"id": "gone-chat", "price": PRICE}]},
        ]  # fmt: skip
        doc["units"][0]["models"] += ["hostile-chat", "gone-chat"]

    with gateway_stack(
        pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("errors"), mutate=add_providers,
        extra_env={"TEST_HOSTILE_KEY": PROVIDER_KEY, "TEST_HOSTILE_HEADER": HEADER_SECRET,
                   "EDUAIQ_PROVIDER_SECRET_VARS": "TEST_HOSTILE_KEY,TEST_HOSTILE_HEADER"},
    ) as s:  # fmt: skip
        yield s


def _chat(stack: Stack, model: str) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {stack.key('alice')}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


LEAKS = ("10.20.30.40", "gpu07.campus.internal:8000", "http://", "sk-hostile", "31337", "tok-abc123xyz",
         "[fd00::17]", "5432", HEADER_SECRET, "vllm-0.gpu", "cluster.local", "AIzaSy", "gpu01.internal",
         "Traceback")  # fmt: skip


def _assert_clean(response: httpx.Response, stack: Stack, hostile: Capture) -> dict[str, Any]:
    text = response.text
    for leak in (*LEAKS, str(hostile.port), "127.0.0.1", "hostile/", "gone/"):
        assert leak not in text, (leak, text)
    body: dict[str, Any] = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body


def test_a_4xx_keeps_only_the_students_part_of_the_message(stack: Stack, hostile: Capture) -> None:
    message = (
        "This model's maximum context length is 4096 tokens, however you requested 9000 tokens. "
        "See http://10.20.30.40:8000/docs on gpu07.campus.internal:8000 ([fd00::17]:5432) with "
        f"Authorization: Bearer tok-abc123xyz and key {PROVIDER_KEY}"
    )
    hostile.answer(400, orjson.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400,
                                                "param": None, "internal": "http://10.20.30.40/"}}))  # fmt: skip
    response = _chat(stack, "hostile-chat")
    assert response.status_code == 400
    body = _assert_clean(response, stack, hostile)
    assert body["error"]["message"].startswith("This model's maximum context length is 4096 tokens")
    assert body["error"]["type"] == "BadRequestError"


def test_a_4xx_that_is_not_an_openai_error_becomes_a_plain_sentence(stack: Stack, hostile: Capture) -> None:
    hostile.answer(403, b"<html>nginx at gpu07.campus.internal:8000 (10.20.30.40) denied tok-abc123xyz</html>",
                   "text/html")  # fmt: skip
    response = _chat(stack, "hostile-chat")
    assert response.status_code == 403
    body = _assert_clean(response, stack, hostile)
    assert body["error"]["message"] == "the model's server refused the request (HTTP 403)"


def test_a_5xx_excerpt_never_reaches_the_student(stack: Stack, hostile: Capture) -> None:
    hostile.answer(500, b'Traceback: psycopg2 connect("host=10.20.30.40 port=5432 password=tok-abc123xyz") '
                   b"via http://gpu07.campus.internal:8000/v1")  # fmt: skip
    response = _chat(stack, "hostile-chat")
    assert response.status_code == 502
    body = _assert_clean(response, stack, hostile)
    assert body["error"]["code"] == "upstream_unavailable"
    log = next(p for p in stack.logs if p.name.startswith("gateway")).read_text()
    assert "10.20.30.40" in log  # the operator still learns what happened


def test_an_unreachable_upstream_is_not_named(stack: Stack, hostile: Capture) -> None:
    response = _chat(stack, "gone-chat")
    assert response.status_code == 502
    body = _assert_clean(response, stack, hostile)
    assert body["error"]["message"] == "the model is unavailable right now; please retry in a moment"


def test_a_4xx_echoing_a_header_secret_host_names_or_a_google_key_is_cut(
    stack: Stack, hostile: Capture
) -> None:
    """Found by the attack review: only the provider's key was cut; the value of an `env:` header, bare
    internal host names and Google-style keys reached the student."""
    message = (f"Invalid campus header ({HEADER_SECRET}) for vllm-0.gpu.svc.cluster.local (also gpu01.internal);"
               " key AIzaSyA1234567890abcdefghijklmnopqrstu; prompt too long for Qwen2.5-7B")  # fmt: skip
    hostile.answer(400, orjson.dumps({"error": {"message": message, "type": "BadRequestError"}}))
    response = _chat(stack, "hostile-chat")
    assert response.status_code == 400
    body = _assert_clean(response, stack, hostile)
    assert body["error"]["message"].endswith("prompt too long for Qwen2.5-7B"), body


def test_an_error_event_mid_stream_reaches_the_student_as_a_sentence(stack: Stack, hostile: Capture) -> None:
    """vLLM sends `data: {"error": ...}` when a worker fails mid-answer; it was relayed as the server wrote
    it (internal host names, addresses, a traceback). The student keeps the answer so far and a sentence."""
    error = {"error": {"message": "worker http://vllm-0.gpu.svc.cluster.local:8000/v1 at 10.20.30.40:8000 "
                       f"failed: Traceback File /opt/vllm/engine.py {HEADER_SECRET}", "type": "InternalServerError",
                       "code": 500}}  # fmt: skip
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}  # fmt: skip
    hostile.answer(200, b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(error) + b"\n\n",
                   "text/event-stream")  # fmt: skip
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {stack.key('alice')}"},
                      json={"model": "hostile-chat", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as response:  # fmt: skip
        text = response.read().decode()
    assert response.status_code == 200
    assert "Hello" in text, text
    for leak in (*LEAKS, "/opt/vllm"):
        assert leak not in text, (leak, text)
    events = [orjson.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    errors = [e["error"] for e in events if "error" in e]
    assert errors and errors[0]["message"] == "the model's server reported an error mid-answer; please retry"
