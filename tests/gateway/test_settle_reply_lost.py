"""A settle whose script ran in Redis but whose reply never reached the gateway (the connection dropped after
the command went through) is retried; the retry must get the first settle's answer, not 'gone'."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from cli.services.process import free_port
from tests.gateway.harness import gateway_stack
from tests.gateway.test_recovery import _cost, _ledger_rows, _priced

_SETTLE_OP = b"$1\r\nS\r\n"  # a settle operation inside an EVALSHA of quota/lua/ops.lua


class LosingProxy:
    """A TCP proxy in front of Redis. Once armed, the first connection that sends a settle gets it forwarded
    and executed, then is closed before Redis's reply reaches the client: the reply is lost."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.armed = threading.Event()
        self.dropped = 0
        self._upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LosingProxy:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()
        server.close()

    async def _client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        losing = asyncio.Event()

        async def up() -> None:
            while data := await creader.read(65536):
                if self.armed.is_set() and b"EVALSHA" in data and _SETTLE_OP in data:
                    self.armed.clear()
                    losing.set()
                swriter.write(data)
                await swriter.drain()

        async def down() -> None:
            while data := await sreader.read(65536):
                if losing.is_set():  # Redis ran the settle; its reply goes nowhere and the link drops
                    self.dropped += 1
                    break
                cwriter.write(data)
                await cwriter.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (cwriter, swriter):
            with contextlib.suppress(Exception):
                w.close()


def test_a_settle_whose_reply_is_lost_is_retried_and_charged_once_funded(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """30 tokens served on a cap of 10,000: the settle runs in Redis (counters charge 30) and its reply is
    lost; the retry must answer with the same settlement, so the ledger row is funded (overage 0) and agrees
    with the counters. Before the fix the retry found the hold gone and recorded the 30 as unfunded overage
    while the counters had charged them: I3 and the counters/ledger agreement both broken."""
    upstream_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with LosingProxy(upstream_port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        with gateway_stack(pg_server_url, url, kafka_bootstrap, tmp_path, mutate=_priced(10_000), consumer=True,
                           upstream_args=("--reply-tokens", "30",)) as stack:  # fmt: skip
            proxy.armed.set()
            r = httpx.post(stack.base_url + "/v1/chat/completions", timeout=60,
                           headers={"Authorization": f"Bearer {stack.key('alice')}"},
                           json={"model": "demo-chat", "max_tokens": 100,
                                 "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            assert r.status_code == 200
            deadline = time.monotonic() + 60
            while (
                not (rows := _ledger_rows(stack.db_url, stack.institution, "ok"))
                and time.monotonic() < deadline
            ):
                time.sleep(0.5)
            assert proxy.dropped == 1  # the fault did happen
            rows_out: list[Any] = [(row[1], row[2]) for row in rows]
            assert rows_out == [(30, 0)]  # cost 30, funded: no overage
            assert rows[0][4]["allocation"]["cost"] == 30
            state = _cost(stack)
            assert (state["used"], state["reserved"]) == (30, 0)
