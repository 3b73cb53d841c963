"""GPT4All 3.10, as its source does it: exact request bytes, its line parser, and the aborted naming request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg2
import pytest

from tests.gateway.harness import Stack, gateway_stack


@pytest.fixture(scope="module")
def slow(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("g4a"), consumer=True,
                       upstream_args=("--chunk-delay-ms", "30", "--reply-tokens", "150")) as s:  # fmt: skip
        yield s


def gpt4all_request(
    host: str, port: int, key: str, messages: list[dict[str, str]], model: str = "demo-chat"
) -> bytes:
    """QJsonDocument(Compact) sorts keys; Qt's QNetworkAccessManager adds its own headers."""
    root = {"messages": [{"content": m["content"], "role": m["role"]} for m in messages], "model": model,
            "stream": True, "temperature": 0.7, "top_p": 0.4}  # fmt: skip
    body = json.dumps(root, separators=(",", ":"), sort_keys=True).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\nConnection: Keep-Alive\r\n"
        "Accept-Encoding: gzip, deflate\r\nAccept-Language: en-US,*\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
    )
    return head.encode() + body


class Gpt4AllParseError(AssertionError):
    pass


async def converse(
    base: str, key: str, messages: list[dict[str, str]], stop_after_words: int | None
) -> tuple[int, str, bool]:
    """(status, text, finished): parse like GPT4All: every non-empty line must be `data: ` + JSON or [DONE]."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(gpt4all_request(host, int(port), key, messages))
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers.get("transfer-encoding") == "chunked" or status != 200
    text, finished, buffer = "", False, b""
    try:
        while not finished:
            size_line = await reader.readline()
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                break
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode()
                if not line:
                    continue
                if not line.startswith("data: "):
                    raise Gpt4AllParseError(f"GPT4All would show 'invalid json' for line {line!r}")
                payload = line.removeprefix("data: ")
                if payload == "[DONE]":
                    finished = True
                    break
                chunk = json.loads(payload)
                text += chunk["choices"][0]["delta"].get("content") or "" if chunk.get("choices") else ""
                if stop_after_words is not None and len(text.split()) >= stop_after_words:
                    return status, text, False  # GPT4All aborts the naming request here
        assert buffer.strip(b"\n") == b"", f"a partial last line (no newline): {buffer!r}"
        return status, text, finished
    finally:
        writer.close()


def test_chat_then_aborted_naming_request_is_charged_for_what_was_produced(slow: Stack) -> None:
    key = slow.key("alice")
    first = [{"role": "user", "content": "What is a linked list?"}]
    status, answer, finished = asyncio.run(converse(slow.base_url, key, first, None))
    assert status == 200 and finished and answer

    naming = [*first, {"role": "assistant", "content": answer},
              {"role": "user", "content": "Describe the above conversation in seven words or less."}]  # fmt: skip
    status, title, finished = asyncio.run(converse(slow.base_url, key, naming, stop_after_words=3))
    assert status == 200 and not finished and len(title.split()) >= 3

    rows = _ledger_rows(slow, expected=2)
    complete, aborted = rows
    assert complete["status"] == "ok" and aborted["status"] == "client_abort"
    # charged for what the provider produced: at least the words GPT4All saw, far less than the whole reply
    assert 3 <= aborted["output_tokens"] < 150
    assert complete["output_tokens"] == 150
    assert aborted["cost_micro"] > 0
    me = httpx.get(slow.base_url + "/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
    member_cost = me["budget"]["nodes"][0]["metrics"]["cost"]
    assert member_cost["reserved"] == 0
    assert member_cost["used"] == complete["cost_micro"] + aborted["cost_micro"]


def _ledger_rows(stack: Stack, expected: int, timeout: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        conn = psycopg2.connect(stack.db_url)
        with conn.cursor() as cur:
            cur.execute("select status, output_tokens, cost_micro from usage_event where institution_id=%s "
                        "order by started_at", (stack.institution,))  # fmt: skip
            rows = [{"status": s, "output_tokens": o, "cost_micro": c} for s, o, c in cur.fetchall()]
        conn.close()
        if len(rows) >= expected or time.monotonic() > deadline:
            assert len(rows) == expected, rows
            return rows
        time.sleep(0.3)


def _limited(doc: dict[str, Any]) -> None:
    """Each CS101 member may send one request a minute; the vision model's contract is (nearly) used up."""
    cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
    cs101["member_limits"] = {"requests_per_minute": 1}
    doc["providers"][0]["models"][1]["contract"] = {"cost": 0.000001, "period": "month"}


@pytest.fixture(scope="module")
def limited(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("g4l"),
                       mutate=_limited) as s:  # fmt: skip
        yield s


async def _replay(base: str, key: str, model: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """GPT4All's request; on an error it shows `error.message` of the JSON body."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(gpt4all_request(host, int(port), key, [{"role": "user", "content": "Hello"}], model))
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"])) if status != 200 else b"{}"
    writer.close()
    return status, headers, json.loads(body)


def test_rate_limit_refusal_reads_as_a_sentence(limited: Stack) -> None:
    key = limited.key("alice")
    status, _, _ = asyncio.run(_replay(limited.base_url, key, "demo-chat"))
    assert status == 200
    status, headers, body = asyncio.run(_replay(limited.base_url, key, "demo-chat"))
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    message = body["error"]["message"]
    assert message.startswith("Rate limit reached: your personal limit in CS101 Introduction to Programming is "
                              "1 request per minute."), message  # fmt: skip
    assert "try again in" in message and int(headers["retry-after"]) >= 1

    status, headers, body = asyncio.run(_replay(limited.base_url, limited.key("rita"), "demo-vision"))
    assert (
        status == 429
        and body["error"]["code"] == "insufficient_quota"
        and headers["x-should-retry"] == "false"
    )
    assert body["error"]["message"].startswith(
        "Demo University's contract with demo (demo-vision) is fully committed for this month: USD 0.000001 left"
    ), body["error"]["message"]
    assert body["error"]["message"].endswith("Ask your administrator.")
