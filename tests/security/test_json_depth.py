"""Issue 17 item 13 (JSON depth): a body nested ~990 deep returned 503 (which the SDKs retry) and wrote
about 2,900 log lines per request. Sent to a real gateway process: a 400 in OpenAI's error shape, and
the gateway's log does not grow with it. A body nested as deep as a real request (a tool schema) works.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.harness import Stack, gateway_stack

MAX_JSON_DEPTH = 64  # gateway.requests.MAX_JSON_DEPTH, spelled out so this file also runs on old code


@pytest.fixture(scope="module")
def stack(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("depth")) as s:
        yield s


def _nested(depth: int) -> Any:
    """A value whose outermost container is at level 2 of the body and whose innermost is at `depth`."""
    value: Any = "x"
    for i in range(depth - 1):
        value = [value] if i % 2 else {"a": value}
    return value


def _raw_nested(depth: int) -> bytes:
    """_nested(depth) as JSON text, written by hand: Python's and orjson's encoders stop far earlier."""
    opens = [b'{"a":' if i % 2 == 0 else b"[" for i in reversed(range(depth - 1))]
    closes = [b"}" if i % 2 == 0 else b"]" for i in range(depth - 1)]
    return b"".join(opens) + b'"x"' + b"".join(closes)


def _chat(depth: int) -> bytes:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "tools": [tool]}  # fmt: skip
    return orjson.dumps(body)[:-1] + b',"metadata":' + _raw_nested(depth) + b"}"


def _log_lines(stack: Stack) -> int:
    """The gateway's own log lines (its usage sidecar, which shares the file, logs Kafka chatter)."""
    return sum(
        sum(1 for line in p.read_bytes().splitlines() if b"usage-sidecar" not in line)
        for p in stack.logs
        if p.name.startswith("gateway")
    )


@pytest.mark.parametrize("depth", [990, 1000, MAX_JSON_DEPTH + 1])
def test_deeply_nested_json_is_a_400_without_log_spam(stack: Stack, depth: int) -> None:
    before = _log_lines(stack)
    for path in ("chat/completions", "completions", "embeddings"):
        r = httpx.post(f"{stack.base_url}/v1/{path}", content=_chat(depth), timeout=60,
                       headers={"Authorization": f"Bearer {stack.key('alice')}", "content-type": "application/json"})  # fmt: skip
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"
        assert set(error) == {"message", "type", "param", "code"}
    assert _log_lines(stack) - before < 10  # a refusal, not a traceback per request


def test_nesting_as_deep_as_a_real_request_is_served(stack: Stack) -> None:
    # A tool schema nests a few levels; a body at exactly the limit is served.
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", content=_chat(MAX_JSON_DEPTH), timeout=60,
                   headers={"Authorization": f"Bearer {stack.key('alice')}", "content-type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text


def test_the_depth_check_is_exact_at_the_limit() -> None:
    from gateway.requests import MAX_JSON_DEPTH as limit
    from gateway.requests import parse_json

    assert limit == MAX_JSON_DEPTH
    assert orjson.loads(_raw_nested(5)) == _nested(5)
    for depth in (MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH):
        parse_json(orjson.dumps({"m": _nested(depth)}), 1 << 20)
    with pytest.raises(Exception, match="deeper than"):
        parse_json(orjson.dumps({"m": _nested(MAX_JSON_DEPTH + 1)}), 1 << 20)
    # Many brackets side by side are not depth: a long conversation is accepted.
    parse_json(orjson.dumps({"messages": [{"role": "user", "content": [{"type": "text"}]}] * 500}), 1 << 20)
