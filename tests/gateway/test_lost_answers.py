"""A non-stream answer lost after the upstream's 200 head is billed at its bound, once, never retried.

The upstream double below answers `200 OK` and then either sends a body larger than the gateway's
response cap or stops sending it (the read timeout passes). The model has run by then and a commercial
provider bills it, so the request must not be retried on another deployment (the double would run it
twice) nor released (it would be free). Two deployments of the model both point at the double, so a
retry would show in its request count.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from aiohttp import web

from gateway.estimate import chat_prompt_bound
from tests.gateway.harness import Stack, gateway_stack
from tests.providers.wire import run_app

CAP_BYTES = 4096  # EDUAIQ_UPSTREAM_MAX_RESPONSE_BYTES for the gateway under test
MAX_TOKENS = 50
BODY = {"model": "demo-chat", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "hello"}]}


class LossyUpstream:
    """An OpenAI-compatible server whose 200 answers never arrive whole: `mode` is `big` (a body over
    the cap) or `stall` (the head and a few bytes, then nothing until the gateway hangs up)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop = asyncio.Event()

    def __enter__(self) -> LossyUpstream:
        self._thread.start()
        app = web.Application()
        app.router.add_post("/{dep}/v1/chat/completions", self._chat)
        app.router.add_get("/{dep}/v1/models", self._models)
        self._app = asyncio.run_coroutine_threadsafe(run_app(app), self._loop).result(10)
        self.url = self._app.url
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        asyncio.run_coroutine_threadsafe(self._app.close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "demo-chat", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"id": "chatcmpl-lost", "object": "chat.completion", "choices": [{"index": 0, ')
        if self.mode == "big":
            await resp.write(
                b'"message": {"role": "assistant", "content": "' + b"x" * (4 * CAP_BYTES) + b'"}}]}'
            )
            await resp.write_eof()
            return resp
        try:  # stall: hold the connection until the test ends (the gateway gives up at its read timeout)
            await asyncio.wait_for(self._stop.wait(), 120)
        except TimeoutError:
            pass
        return resp


def _two_deployments(upstream_url: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        price = {"input_per_mtok": 1, "output_per_mtok": 2}  # 1 and 2 micro-units a token
        doc["providers"] = [
            {"id": f"lossy{i}", "type": "openai-compatible", "base_url": f"{upstream_url}/d{i}/v1",
             "timeouts": {"connect": 2, "first_byte": 2, "read": 2},
             "models": [{"id": m, "upstream": m, "max_output_tokens": 1024, "price": price}
                        for m in ("demo-chat", "demo-vision")]}
            for i in (0, 1)
        ]  # fmt: skip
        cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
        cs101["budget"] = {"cost": {"fixed": 0.01}}  # 10,000 micro-units
        del cs101["member_cap"]

    return mutate


def _ledger(stack: Stack, want: int) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + 60
    while True:
        with psycopg2.connect(stack.db_url) as conn, conn.cursor() as cur:
            cur.execute("select status, input_tokens, output_tokens, cost_micro, overage_micro, deployment_id,"
                        " funding from usage_event where institution_id = %s and model_id = 'demo-chat'",
                        (stack.institution,))  # fmt: skip
            rows = list(cur.fetchall())
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _course_cost(stack: Stack) -> dict[str, int]:
    me = httpx.get(stack.base_url + "/v1/me", headers={"Authorization": f"Bearer {stack.key('alice')}"},
                   timeout=30).json()  # fmt: skip
    node = next(n for n in me["budget"]["nodes"] if n["unit"] == "cs101" and n["kind"] != "member")
    return node["metrics"]["cost"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["big", "stall"])
def test_answer_lost_after_its_200_head_is_billed_at_its_bound_and_never_retried(
    mode: str, pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Before the fix: the lost answer moved on to the second deployment (the double ran the request
    twice), the hold was released and the ledger row said 0 tokens, 0 cost: served work for free."""
    with (
        LossyUpstream(mode) as upstream,
        gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, mutate=_two_deployments(upstream.url),
                      consumer=True, extra_env={"EDUAIQ_UPSTREAM_MAX_RESPONSE_BYTES": str(CAP_BYTES)}) as stack,
    ):  # fmt: skip
        r = httpx.post(stack.base_url + "/v1/chat/completions", json=BODY, timeout=60,
                       headers={"Authorization": f"Bearer {stack.key('alice')}"})  # fmt: skip
        assert upstream.requests == 1  # not run again on the second deployment
        bound_in = chat_prompt_bound(BODY)
        cost = bound_in * 1 + MAX_TOKENS * 2
        rows = _ledger(stack, 1)
        assert [row[:6] for row in rows] == [
            ("upstream_error", bound_in, MAX_TOKENS, cost, 0, "lossy0/demo-chat")
        ]
        assert rows[0][6]["allocation"]["cost"] == cost  # funded: what `quota rebuild` replays
        state = _course_cost(stack)
        assert (state["used"], state["reserved"]) == (cost, 0)  # the counters are charged, nothing held

        assert r.status_code == 502, r.text  # a clean OpenAI error; nothing of the upstream's in it
        error = r.json()["error"]
        assert error["type"] == "upstream_error" and error["code"] == "upstream_answer_lost"
        assert "x" * 20 not in r.text and "lossy" not in r.text and "127.0.0.1" not in r.text
        assert r.headers["x-should-retry"] == "false"  # a retry would be charged again
