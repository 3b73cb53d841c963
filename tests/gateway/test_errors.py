"""Every /v1 error has the OpenAI shape and the status that makes the SDK raise its matching class."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.harness import Stack
from tests.gateway.test_openai_sdk import HELLO, client


def _shape(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_unknown_key_is_401_without_a_login_challenge(stack: Stack) -> None:
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-nope"},
                   json={"model": "demo-chat", "messages": HELLO})  # fmt: skip
    assert r.status_code == 401
    assert "www-authenticate" not in r.headers
    _shape(r)
    bad = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="demo-chat", messages=HELLO)  # type: ignore[arg-type]


def test_model_not_allowed_for_the_unit_is_403_naming_the_allowed_ones(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(stack, "rita").chat.completions.create(model="demo-vision", messages=HELLO)  # type: ignore[arg-type]
    assert "demo-chat" in str(err.value)


def test_unknown_model_is_404(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(stack).chat.completions.create(model="gpt-9-ultra", messages=HELLO)  # type: ignore[arg-type]
    assert "demo-chat" in str(err.value)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"model":"demo-chat","messages":"hi"}', "messages"),
        (b'{"model":"demo-chat","messages":[{"role":"wizard","content":"hi"}]}', "role"),
        (
            b'{"model":"demo-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}',
            "max_tokens",
        ),
        (b'{"model":"demo-chat","messages":[{"role":"user","content":"hi"}],"stream":"yes"}', "stream"),
        (b'{"model":"demo-chat","messages":[{"role":"user","content":"hi"}],"frobnicate":1}', "frobnicate"),
        (b'{"model":42,"messages":[{"role":"user","content":"hi"}]}', "model"),
    ],
)
def test_bad_requests_are_400_never_500(stack: Stack, body: bytes, needle: str) -> None:
    r = httpx.post(stack.base_url + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {stack.key('alice')}", "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    assert needle in str(_shape(r)["message"])


def test_sdk_raises_bad_request_for_wrong_types(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError):
        client(stack).chat.completions.create(model="demo-chat", messages=HELLO, max_tokens=-3)  # type: ignore[arg-type]


def test_unknown_route_and_wrong_method_use_the_shape(stack: Stack) -> None:
    r = httpx.get(stack.base_url + "/v1/nothing-here")
    assert r.status_code == 404
    _shape(r)
    r = httpx.get(stack.base_url + "/v1/chat/completions")
    assert r.status_code == 405
    _shape(r)


def _wait_served(stack: Stack, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(stack.base_url + "/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {stack.key('bob')}"},
                       json={"model": "demo-chat", "messages": HELLO, "max_tokens": 4})  # fmt: skip
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return
        time.sleep(0.5)


def _admin(stack: Stack, cmd: dict[str, object]) -> None:
    r = httpx.post(stack.upstream_url.removesuffix("/v1") + "/demo/admin", json=cmd)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("fault", "status", "exc"),
    [
        ({"status": 500, "mode": "status", "count": 1000}, 502, openai.InternalServerError),
        ({"status": 429, "mode": "status", "count": 1000}, 503, openai.InternalServerError),
        ({"status": 200, "mode": "hang", "count": 1000}, 504, openai.InternalServerError),
    ],
)
def test_upstream_trouble_is_named_as_such(
    stack: Stack, fault: dict[str, object], status: int, exc: type
) -> None:
    _wait_served(stack)  # a previous case may have left the deployment's breaker open for its cool-down
    _admin(stack, {"fail": fault})
    try:
        r = httpx.post(stack.base_url + "/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {stack.key('bob')}"},
                       json={"model": "demo-chat", "messages": HELLO})  # fmt: skip
        assert r.status_code == status, r.text
        assert "unavailable" in str(_shape(r)["message"]) or "failed" in str(_shape(r)["message"])
        with pytest.raises(exc):
            client(stack, "bob").chat.completions.create(model="demo-chat", messages=HELLO)  # type: ignore[arg-type]
    finally:
        _admin(stack, {"fail": None})
