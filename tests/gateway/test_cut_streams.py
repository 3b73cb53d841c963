"""Anthropic and Gemini streams cut midway are billed at least what the provider reported before the cut.

Anthropic reports the prompt's tokens (cache reads included) in `message_start`, and Gemini a running
`usageMetadata` in every chunk; both bill that much whatever happens to the connection afterwards. A
stream cut before its end (the upstream's connection drops, or the client hangs up) is charged
max(what the provider reported, the gateway's count of the prompt and of what was delivered: one token an
event, or the tokenizer's count of the delivered text, since one Anthropic or Gemini event can carry any
number of tokens).

The provider doubles of tests/providers run unchanged; between them and a real gateway process sits a
TCP proxy that forwards the first N server-sent events of each answer and then either drops both
connections (`cut`: an upstream failure) or forwards nothing more (`hold`: the client then hangs up).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg2
import pytest
from aiohttp import web

from gateway.tokens import prompt_tokens, text_tokens
from tests.gateway.harness import Stack, gateway_stack
from tests.providers.anthropic_double import API_KEY as ANTHROPIC_KEY
from tests.providers.anthropic_double import CACHE_READ, AnthropicDouble
from tests.providers.gemini_double import API_KEY as GEMINI_KEY
from tests.providers.gemini_double import CACHED, GeminiDouble
from tests.providers.wire import run_app, tokens_of

PROMPT = "x" * 400  # the doubles report 100 prompt tokens; o200k counts far fewer (the gap is the bug)


class EventCutter:
    """A TCP proxy in front of one double: passes the request through and the first `events` SSE
    events of the answer (counted by their `data: ` lines), then `cut`s both connections or `hold`s."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target_port: int) -> None:
        self.loop = loop
        self.target_port = target_port
        self.mode = "cut"
        self.events = 0
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        mode, keep = self.mode, self.events

        async def upward() -> None:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()

        async def downward() -> None:
            seen, sent = bytearray(), 0
            while data := await ur.read(65536):
                seen += data
                cut, at = -1, -1
                for _ in range(keep + 1):
                    at = seen.find(b"data: ", at + 1)
                    if at < 0:
                        break
                else:
                    cut = at
                end = len(seen) if cut < 0 else cut
                cw.write(bytes(seen[sent:end]))
                await cw.drain()
                sent = end
                if cut >= 0:
                    if mode == "cut":
                        return
                    await up  # hold: nothing more until the gateway hangs up
                    return

        up = asyncio.ensure_future(upward())
        try:
            await downward()
        finally:
            up.cancel()
            for w in (cw, uw):
                w.close()


@pytest.fixture(scope="module")
def doubles() -> Iterator[dict[str, EventCutter]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[list[Any], dict[str, EventCutter]]:
        a, g = await AnthropicDouble().start(), await GeminiDouble().start()
        cutters = {}
        for name, d in (("claude", a), ("gem", g)):
            assert d.app is not None
            cutters[name] = EventCutter(loop, d.app.port)
            await cutters[name].start()
        return [a, g], cutters

    started, cutters = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield cutters

    async def stop() -> None:
        for d in started:
            await d.close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


BIG_TEXT = " word" * 2000 + " <END>"  # about 2,000 tokens in one event


async def _one_big_delta(request: web.Request) -> web.StreamResponse:
    """An Anthropic stream whose single text delta carries the whole answer, its final usage 30 s later: a
    client that hangs up once it has the text leaves before the provider says how many tokens it billed."""
    req = orjson.loads(await request.read())
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def event(name: str, data: dict[str, Any]) -> None:
        await resp.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

    usage = {"input_tokens": 10, "output_tokens": 1}
    await event("message_start", {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": req["model"], "content": [],
        "stop_reason": None, "usage": usage}})  # fmt: skip
    await event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    await event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": BIG_TEXT}},
    )
    await asyncio.sleep(30)
    await event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": 2002}})  # fmt: skip
    await event("message_stop", {"type": "message_stop"})
    return resp


@pytest.fixture(scope="module")
def big_double() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Any:
        app = web.Application()
        app.router.add_post("/v1/messages", _one_big_delta)
        return await run_app(app)

    running = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield running.port
    asyncio.run_coroutine_threadsafe(running.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _providers(cutters: dict[str, EventCutter], big: int) -> Any:
    price = {"input_per_mtok": 1, "output_per_mtok": 2}  # 1 and 2 micro-units a token

    def mutate(doc: dict[str, Any]) -> None:
        doc["providers"] += [
            {"id": "anthropic", "type": "anthropic", "api_key_env": "TEST_ANTHROPIC_KEY",
             "base_url": f"http://127.0.0.1:{cutters['claude'].port}/v1",
             "models": [{"id": "claude", "upstream": "claude-sonnet-4-5", "price": price}]},
            {"id": "google", "type": "gemini", "api_key_env": "TEST_GEMINI_KEY",
             "base_url": f"http://127.0.0.1:{cutters['gem'].port}/v1beta",
             "models": [{"id": "gem", "upstream": "gemini-2.5-flash", "price": price}]},
            {"id": "anthropic-big", "type": "anthropic", "api_key_env": "TEST_ANTHROPIC_KEY",
             "base_url": f"http://127.0.0.1:{big}/v1",
             "models": [{"id": "claude-big", "upstream": "claude-sonnet-4-5", "price": price}]},
        ]  # fmt: skip
        doc["units"][0]["models"] += ["claude", "gem", "claude-big"]

    return mutate


@pytest.fixture(scope="module")
def stack(
    doubles: dict[str, EventCutter],
    big_double: int,
    pg_server_url: str,
    redis_url: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    env = {
        "EDUAIQ_PROVIDER_SECRET_VARS": "TEST_ANTHROPIC_KEY,TEST_GEMINI_KEY",
        "TEST_ANTHROPIC_KEY": ANTHROPIC_KEY,
        "TEST_GEMINI_KEY": GEMINI_KEY,
    }
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("cut"),
                       mutate=_providers(doubles, big_double), consumer=True, extra_env=env) as s:  # fmt: skip
        yield s


def _row(stack: Stack, request_id: str) -> tuple[Any, ...]:
    deadline = time.monotonic() + 60
    while True:
        with psycopg2.connect(stack.db_url) as conn, conn.cursor() as cur:
            cur.execute("select status, input_tokens, output_tokens, cached_tokens, cost_micro from usage_event"
                        " where institution_id = %s and request_id = %s", (stack.institution, request_id))  # fmt: skip
            rows = list(cur.fetchall())
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1, rows
            return tuple(rows[0])
        time.sleep(0.5)


# model, upstream events passed, what the provider reported by then (input incl. cache reads, output,
# cache reads), the OpenAI chunks the gateway delivers from those events
CASES = {
    # message_start (input 100 + 5 cache reads, output 1), ping, content_block_start, 2 text deltas
    "claude": (5, (tokens_of([PROMPT]) + CACHE_READ, 1, CACHE_READ), 3),
    # 3 chunks, the third with usageMetadata promptTokenCount 100, candidatesTokenCount 3; the first
    # chunk becomes the role chunk and its text
    "gem": (3, (tokens_of([PROMPT]), 3, CACHED), 4),
}


@pytest.mark.parametrize("mode", ["cut", "hold"])
@pytest.mark.parametrize("model", ["claude", "gem"])
def test_cut_stream_is_billed_at_least_what_the_provider_reported(
    model: str, mode: str, stack: Stack, doubles: dict[str, EventCutter]
) -> None:
    """Before the fix the cut stream was charged a tokenizer's count of the prompt (56 tokens here) and
    one token a delivered event, ignoring the 100+ prompt tokens the provider had reported and bills."""
    events, (rep_in, rep_out, cached), delivered = CASES[model]
    doubles[model].mode, doubles[model].events = mode, events
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    counted_in = asyncio.run(prompt_tokens(body, 262144))
    assert rep_in > counted_in  # the provider's report is what must win here

    chunks: list[dict[str, Any]] = []
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {stack.key('alice')}"}) as r:  # fmt: skip
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(orjson.loads(line[6:]))
                if mode == "hold" and len(chunks) == delivered:
                    break  # the client hangs up while the upstream is silent
    answered = [c for c in chunks if "choices" in c]
    assert len(answered) == delivered
    if mode == "cut":
        assert chunks[-1]["error"]["code"] == "upstream_stream_error"

    status, inp, out, cached_tokens, cost = _row(stack, request_id)
    assert status == ("upstream_error" if mode == "cut" else "client_abort")
    text = [d for c in answered for ch in c["choices"] if (d := (ch.get("delta") or {}).get("content"))]
    expect_in = max(rep_in, counted_in)
    expect_out = max(rep_out, delivered, asyncio.run(text_tokens(text, 262144)))
    assert (inp, out, cached_tokens) == (expect_in, expect_out, cached)
    assert cost == expect_in * 1 + expect_out * 2


def test_a_client_hanging_up_after_one_big_event_pays_for_its_text(stack: Stack) -> None:
    """One Anthropic event carried about 2,000 tokens; the client hung up once it had them, before the
    provider's final usage. Billed one token an event, the answer cost 2 output tokens (attack review);
    the delivered text's count is what the provider bills, near enough."""
    body = {"model": "claude-big", "stream": True, "max_tokens": 4000,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    got = ""
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {stack.key('alice')}"}) as r:  # fmt: skip
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[6:]).get("choices", []):
                    got += (choice.get("delta") or {}).get("content") or ""
                if "<END>" in got:
                    break  # the whole answer is here: hang up
    status, _inp, out, _cached, cost = _row(stack, request_id)
    assert status == "client_abort"
    expected = asyncio.run(text_tokens([BIG_TEXT], 262144))
    assert expected >= 2000
    assert out == expected, (
        f"{out} output tokens billed for {expected} tokens of text delivered (cost {cost})"
    )
