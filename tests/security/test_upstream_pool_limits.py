"""Issue 17 item 13 (the upstream pool): a model server, or whatever an admin pointed a provider at,
cannot make the gateway open connections without end or hold answers without end.

Raw servers on loopback write exact bytes: one that never finishes its answers (connections pile up),
one whose non-stream answer is larger than the cap, one whose single server-sent event never ends, one
whose stream never ends. Then the settings through a real `eduaiq gateway` in front of the demo model
server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from providers import http as upstream_http
from providers.build import build_router
from providers.errors import UpstreamStreamError, UpstreamUnavailable
from providers.http import UpstreamPool
from providers.router import UpstreamAnswerLost
from tests.gateway.harness import Stack, gateway_stack
from tests.providers.test_http_pool import raw_server, read_request

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _provider(url: str) -> list[dict[str, object]]:
    return [{"id": "p", "type": "openai-compatible", "base_url": url + "/v1", "health_check": False,
             "timeouts": {"connect": 30, "first_byte": 60, "read": 60},
             "models": [{"id": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}]  # fmt: skip


async def test_connections_per_host_are_capped_and_callers_wait_their_turn() -> None:
    release = asyncio.Event()
    open_now = 0
    most = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await read_request(reader)
                await release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        finally:
            open_now -= 1

    async with raw_server(slow) as (url, connections):
        pool = UpstreamPool(limits=upstream_http.PoolLimits(max_connections_per_host=3))
        try:

            async def one() -> int:
                r = await pool.request("GET", url + "/x", connect_timeout=60, read_timeout=60)
                await r.read()
                r.release()
                return r.status

            calls = [asyncio.create_task(one()) for _ in range(12)]
            for _ in range(200):  # until the first three are waiting at the server
                if len(connections) >= 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the other nine had every chance to open more
            assert len(connections) == 3
            release.set()
            assert await asyncio.gather(*calls) == [200] * 12
        finally:
            await pool.close()
    assert most == 3 and len(connections) == 3  # the waiting callers reused the three connections


async def test_a_non_stream_answer_over_the_cap_is_refused() -> None:
    big = b"x" * (3 * 1024 * 1024)

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big)
        )
        writer.write(big)
        await writer.drain()

    async with raw_server(huge) as (url, _):
        pool = UpstreamPool(limits=upstream_http.PoolLimits(max_response_bytes=1024 * 1024))
        router = build_router(_provider(url), session=pool)
        try:
            # The model ran and its provider bills it: never retried elsewhere, charged at the bound by the
            # gateway (tests/gateway/test_lost_answers.py), answered 502.
            with pytest.raises(UpstreamAnswerLost) as caught:
                await router.open("m", BODY, stream=False)
            assert caught.value.status == 502
            assert "larger than 1048576 bytes" in str(caught.value)
        finally:
            await router.close()
            await pool.close()


async def test_an_event_that_never_ends_is_cut_at_the_cap() -> None:
    async def endless_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + _chunk(b'data: {"choices":[{"delta":{"content":"'))
        for _ in range(64):  # 4 MiB of one event, never terminated
            writer.write(_chunk(b"a" * 65536))
            await writer.drain()
        await asyncio.sleep(30)

    async with raw_server(endless_event) as (url, _):
        pool = UpstreamPool(limits=upstream_http.PoolLimits(max_event_bytes=512 * 1024))
        router = build_router(_provider(url), session=pool)
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await router.open("m", BODY, stream=True)
            assert "event larger than 524288 bytes" in str(caught.value)
        finally:
            await router.close()
            await pool.close()


async def test_a_stream_that_never_ends_is_cut_at_the_cap() -> None:
    event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"a" * 1000 + b'"}}]}\n\n'

    async def endless_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        for _ in range(10_000):  # ~10 MB, far past the cap
            if writer.transport.is_closing():
                return  # the gateway hung up: what the cap is for
            writer.write(_chunk(event))
            await writer.drain()

    async with raw_server(endless_stream) as (url, _):
        pool = UpstreamPool(limits=upstream_http.PoolLimits(max_stream_bytes=256 * 1024))
        router = build_router(_provider(url), session=pool)
        relayed = 0
        try:
            resp = await router.open("m", BODY, stream=True)
            with pytest.raises(UpstreamStreamError, match="longer than 262144 bytes"):
                async for blob in resp:
                    relayed += len(blob)
        finally:
            await router.close()
            await pool.close()
    assert 0 < relayed <= 256 * 1024


# -- the settings, through a real gateway -------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(
        pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("poolcaps"),
        upstream_args=("--reply-tokens", "400", "--chunk-delay-ms", "2"),
        extra_env={"EDUAIQ_UPSTREAM_MAX_RESPONSE_BYTES": "2048", "EDUAIQ_UPSTREAM_MAX_STREAM_BYTES": "8192"},
    ) as s:  # fmt: skip
        yield s


def test_the_gateway_applies_the_settings(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.key('alice')}"}
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "write a lot"}]}
    whole = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert whole.status_code == 502, whole.text
    assert whole.json()["error"]["code"] == "upstream_answer_lost"  # billed at its bound, not retried
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", json={**body, "stream": True},
                      headers=headers, timeout=60) as streamed:  # fmt: skip
        assert streamed.status_code == 200
        text = b"".join(streamed.iter_bytes())
    assert b"upstream_stream_error" in text
    assert len(text) < 8192 + 1024


async def test_whole_answers_held_at_once_are_capped_per_worker() -> None:
    """Found by the attack review: each answer was capped, their sum was not (twenty 60 MB answers at once
    took a worker to 3 GB). Two answers of 3 MiB against a 4 MiB budget: the one that passes it is lost
    (after its 200: billed at its bound), the other is answered; the budget is free again afterwards."""
    size = 3 * 1024 * 1024
    body = b'{"choices":[],"pad":"' + b"x" * (size - 30) + b'"}'

    async def slow_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        half = len(body) * 5 // 6
        writer.write(body[:half])  # 2.5 MiB each, then a pause: both are being held at once
        await writer.drain()
        await asyncio.sleep(1.0)
        writer.write(body[half:])
        await writer.drain()

    async with raw_server(slow_big) as (url, _):
        limits = upstream_http.PoolLimits(
            max_response_bytes=4 * 1024 * 1024, max_buffered_bytes=4 * 1024 * 1024
        )
        pool = UpstreamPool(limits=limits)
        router = build_router(_provider(url), session=pool)
        try:
            results = await asyncio.gather(
                router.open("m", BODY, stream=False),
                router.open("m", BODY, stream=False),
                return_exceptions=True,
            )
            lost = [r for r in results if isinstance(r, UpstreamAnswerLost)]
            served = [r for r in results if not isinstance(r, BaseException)]
            assert len(lost) == 1 and len(served) == 1, results
            assert "holding 4194304 bytes of whole answers" in str(lost[0])
            assert pool.buffered == 0
        finally:
            await router.close()
            await pool.close()


async def test_an_endless_header_value_fails_the_request_at_the_head_cap_and_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 200 status line and then one header value that never ends: the pool read it for as long as the
    provider's first_byte timeout allowed, and httptools grows a value by concatenation (20 MiB in 64 KB
    reads cost 2.9 s of the event loop). Now the head is capped (PoolLimits.max_head_bytes)."""
    cap = 64 * 1024
    fed: list[int] = []
    sent = 0

    class Counted(upstream_http._Connection):
        def data_received(self, data: bytes) -> None:
            fed.append(len(data))
            super().data_received(data)

    monkeypatch.setattr(upstream_http, "_Connection", Counted)

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        while True:
            writer.write(b"a" * 16384)
            sent += 16384
            await writer.drain()

    async with raw_server(endless) as (url, _):
        pool = UpstreamPool(limits=upstream_http.PoolLimits(max_head_bytes=cap))
        try:
            with pytest.raises(upstream_http.UpstreamTooLarge, match=str(cap)):
                await pool.request("GET", url + "/x", connect_timeout=5, read_timeout=5, overall_timeout=5)
        finally:
            await pool.close()
    assert cap < sum(fed) <= cap + max(fed), fed  # stopped reading within one read past the cap
    for _ in range(100):  # the connection was closed, its slot given back
        if not pool._open:
            break
        await asyncio.sleep(0.01)
    assert pool._open == {}


def test_provider_timeouts_are_bounded() -> None:
    """An admin-set first_byte (or read) of days let an upstream hold a request, and a worker's parser,
    that long."""
    from pydantic import ValidationError

    from providers.config import TimeoutConfig

    TimeoutConfig(connect=60, first_byte=600, read=3600)
    for field, value in (("connect", 61), ("first_byte", 601), ("read", 3601)):
        with pytest.raises(ValidationError):
            TimeoutConfig(**{field: value})
