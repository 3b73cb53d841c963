"""HTTP/1.1 conformance of the gateway's own server (gateway/server.py): what uvicorn's protocol tests
(tests/protocols/test_http.py) check of uvicorn, written for this server, plus its limits.

Raw bytes over real sockets, as tests/gateway/test_server.py does (whose cases are not repeated here:
keep-alive, pipelining, any split of the byte stream, 100-continue, refusals of too large requests,
hang-ups mid-stream, head deadline, shutdown). Framing of requests (Content-Length, chunked with
extensions and trailers), malformed request lines, headers and chunk sizes (400 and close), HTTP/1.0,
Connection: close, HEAD, 204, upgrades, early client close, an app that misbehaves (no response, a
partial one, two starts, a body first, a message after the end), a response after the client left,
and the limits: one header value, header lines, trailers, the body deadline, read-ahead per connection,
request bytes per worker (unfinished and queued heads too), requests in progress and open connections;
and a client that does not read its answers (pipelined or streamed): back-pressure, and the write timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest

from gateway import server as server_module
from tests.gateway.rawhttp import LIMITS, Server, closed, read_answer, request, running


async def ask(server: Server, wire: bytes, answers: int = 1) -> tuple[list[dict[str, object]], bool]:
    """Write `wire` on a new connection; the answers (status, headers, body) and whether it closed."""
    reader, writer = await server.connect()
    writer.write(wire)
    got = []
    for _ in range(answers):
        a = await read_answer(reader)
        got.append({"status": a.status, "headers": a.headers, "body": a.body})
    writer.write(request("/echo", method="GET"))  # still open? then this is answered
    try:
        still_open = (await asyncio.wait_for(reader.read(12), 10)).startswith(b"HTTP/1.1 200")
    except ConnectionError:
        still_open = False
    writer.close()
    return got, not still_open


def error_of(answer: dict[str, object]) -> dict[str, object]:
    error = orjson.loads(answer["body"])["error"]  # type: ignore[arg-type]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


# -- framing --------------------------------------------------------------------------------------------


async def test_get_post_and_head_are_framed_by_content_length() -> None:
    async with running() as server:
        [get], was_closed = await ask(server, request("/echo", method="GET"))
        assert get["status"] == 200 and int(get["headers"]["content-length"]) == len(get["body"])  # type: ignore[index, arg-type]
        assert not was_closed
        [post], _ = await ask(server, request("/echo", b'{"hello": "world"}'))
        assert orjson.loads(post["body"])["body"] == '{"hello": "world"}'  # type: ignore[arg-type]
        # HEAD: the length the GET would have, and no body bytes (the next answer parses cleanly)
        reader, writer = await server.connect()
        writer.write(request("/echo", method="HEAD") + request("/echo", b"next"))
        head = await read_answer_head_only(reader)
        assert head["content-length"] and int(head["content-length"]) > 0
        nxt = await read_answer(reader)
        assert orjson.loads(nxt.body)["body"] == "next"
        writer.close()


async def read_answer_head_only(reader: asyncio.StreamReader) -> dict[str, str]:
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 2"), status
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return headers


async def test_a_chunked_body_with_extensions_and_trailers_reaches_the_app_whole_and_trailers_do_not() -> (
    None
):
    wire = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nAuthorization: Bearer smuggled\r\nX-Trailer: t\r\n\r\n"
    )
    async with running() as server:
        [answer], was_closed = await ask(server, wire)
        seen = orjson.loads(answer["body"])  # type: ignore[arg-type]
        assert seen["body"] == "hello world" and not was_closed
        # a trailer is not a header the ingress in front could have checked or stripped
        assert "authorization" not in seen["headers"] and "x-trailer" not in seen["headers"]
        [empty], was_closed = await ask(
            server, b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert orjson.loads(empty["body"])["body"] == "" and not was_closed  # type: ignore[arg-type]


async def test_a_body_longer_than_its_content_length_is_read_as_the_next_request() -> None:
    async with running() as server:
        [first, second], was_closed = await ask(server, request("/echo", b"ok") + b"EXTRA\r\n\r\n", answers=2)
        assert orjson.loads(first["body"])["body"] == "ok"  # type: ignore[arg-type]
        assert second["status"] == 400 and error_of(second)["code"] == "bad_http_request"
        assert was_closed


async def test_a_client_that_closes_before_its_body_is_whole_never_reaches_the_app() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(b'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 18\r\n\r\n{"hel')
        await writer.drain()
        writer.write_eof()
        assert await closed(reader)
        writer.close()
        [answer], _ = await ask(server, request("/echo", method="GET"))  # and the server goes on
        assert answer["status"] == 200 and server.rec.seen == ["/echo", "/echo"]  # ask() checks twice


@pytest.mark.parametrize(
    "wire",
    [
        b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost : t\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"GET /echo HTTP/9.9\r\n\r\n",
        b"GET /echo HTTP/1.1 extra\r\n\r\n",
        b"GET /echo HTTP/1.1\nHost: t\n\n",
        b"G(T /echo HTTP/1.1\r\n\r\n",
        b"GET /ec ho HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "content-length-and-chunked", "two-content-lengths", "negative-length", "non-numeric-length",
        "bad-chunk-size", "chunk-size-overflow", "chunk-without-crlf", "unknown-transfer-coding",
        "chunked-not-last", "space-before-colon", "nul-in-value", "no-colon", "obs-fold", "bad-version",
        "extra-token", "bare-lf", "bad-method", "space-in-target",
    ],
)  # fmt: skip
async def test_a_malformed_request_gets_400_in_the_openai_shape_and_the_connection_closes(
    wire: bytes,
) -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(wire)
        answer = await read_answer(reader)
        assert answer.status == 400 and answer.headers["connection"] == "close"
        assert orjson.loads(answer.body)["error"]["code"] == "bad_http_request"
        assert await closed(reader)
        writer.close()
        assert server.rec.seen == []


async def test_visible_characters_and_tabs_in_a_header_value_are_taken_as_sent() -> None:
    value = "a\tb !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ c"
    async with running() as server:
        [answer], _ = await ask(server, request("/echo", method="GET", extra=f"X-Chars: {value}\r\n"))
        assert orjson.loads(answer["body"])["headers"]["x-chars"] == value  # type: ignore[arg-type]


# -- connection management ------------------------------------------------------------------------------


async def test_http_1_0_closes_unless_asked_to_keep_alive_and_a_streamed_answer_ends_with_the_close() -> None:
    async with running() as server:
        [kept], was_closed = await ask(server, b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert kept["status"] == 200 and not was_closed
        reader, writer = await server.connect()
        writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)  # framed by the close: HTTP/1.0 has no chunks
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
        assert body == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
        writer.close()


async def test_nothing_after_a_connection_close_request_is_answered() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/echo", b"x", extra="Connection: close\r\n") + request("/echo", b"y"))
        answer = await read_answer(reader)
        assert orjson.loads(answer.body)["body"] == "x" and answer.headers["connection"] == "close"
        assert await closed(reader)
        writer.close()
        assert server.rec.seen == ["/echo"]


async def test_an_upgrade_is_answered_over_http_1_1_and_nothing_after_it_is_read() -> None:
    wire = b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(wire + b"\x81\x05hello")  # a websocket frame would follow
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert await closed(reader)
        writer.close()


async def test_expect_100_continue_is_not_sent_when_the_request_is_refused_whatever_the_header_order() -> (
    None
):
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99999\r\n\r\n")
        answer = await read_answer(reader)  # the first thing on the wire: not "100 Continue"
        assert answer.status == 413
        writer.close()


async def test_a_stop_closes_idle_keep_alive_connections_at_once() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/echo"))
        await read_answer(reader)
        server.stop.set()
        assert await closed(reader)
        writer.close()


# -- what the app does ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/no-response", "/start-only", "/raise-after-start", "/start-twice", "/body-first"]
)
async def test_an_app_that_gives_no_whole_answer_before_writing_gets_a_500_and_the_connection_closes(
    path: str,
) -> None:
    async with running() as server:
        [answer], was_closed = await ask(server, request(path))
        assert answer["status"] == 500 and error_of(answer)["code"] == "internal_error"
        assert was_closed


@pytest.mark.parametrize("path", ["/partial", "/raise-mid-body"])
async def test_an_answer_cut_short_after_its_first_bytes_ends_the_connection_unterminated(path: str) -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request(path))
        raw = await asyncio.wait_for(reader.read(), 10)  # to the close
        assert raw.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in raw
        assert raw.endswith(b"4\r\npart\r\n")  # no last chunk: the client sees it was cut
        writer.close()


@pytest.mark.parametrize(
    "path", ["/after-end", "/returns-value", "/read-after", "/no-content", "/app-framing"]
)
async def test_the_server_frames_the_answer_and_the_connection_stays_usable(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request(path))
        head = await read_answer_head_only(reader) if path == "/no-content" else None
        if head is not None:  # 204: neither a length nor chunks
            assert "content-length" not in head and "transfer-encoding" not in head
        else:
            answer = await read_answer(reader)
            assert answer.body in {b"done", b"ok", b"plain"}
            assert "transfer-encoding" not in answer.headers and "connection" not in answer.headers
        writer.write(request("/echo", b"next"))
        assert orjson.loads((await read_answer(reader)).body)["body"] == "next"
        writer.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(errors) == (path == "/after-end"), errors  # a message after the end is the app's bug


async def test_an_answer_to_a_client_that_left_is_dropped_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running() as server:
        _, writer = await server.connect()
        writer.write(request("/held"))
        await writer.drain()
        for _ in range(100):
            if server.rec.seen:
                break
            await asyncio.sleep(0.05)
        writer.close()
        await asyncio.sleep(0.3)
        server.rec.release.set()  # the app answers now, to nobody
        await asyncio.sleep(0.3)
        [answer], _ = await ask(server, request("/echo", method="GET"))
        assert answer["status"] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- limits ---------------------------------------------------------------------------------------------


async def test_one_header_value_longer_than_the_limit_is_refused_before_it_ends() -> None:
    """httptools grows a header value in place until its line ends: the bytes must be counted as they
    arrive, not when the line is whole (it never is, here)."""
    async with running(max_header_bytes=8 * 1024) as server:
        reader, writer = await server.connect()
        writer.write(b"GET /echo HTTP/1.1\r\nX-Big: ")
        answer = None
        reading = asyncio.create_task(read_answer(reader))
        for _ in range(400):  # up to 400 KiB, never ending the line
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.005)
            if reading.done():
                break
        answer = await asyncio.wait_for(reading, 10)
        assert answer.status == 431 and orjson.loads(answer.body)["error"]["code"] == "headers_too_large"
        writer.close()


@pytest.mark.parametrize("where", ["head", "trailer"])
async def test_more_header_lines_than_the_limit_get_431(where: str) -> None:
    lines = "".join(f"X-{i}: v\r\n" for i in range(30))
    if where == "head":
        wire = request("/echo", extra=lines)
    else:
        wire = (
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
            + lines.encode()
            + b"\r\n"
        )
    async with running(max_headers=20) as server:
        [answer], was_closed = await ask(server, wire)
        assert answer["status"] == 431 and was_closed and server.rec.seen == []


async def test_a_trailer_value_longer_than_the_limit_is_refused_before_it_ends() -> None:
    async with running(max_header_bytes=8 * 1024) as server:
        reader, writer = await server.connect()
        writer.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Big: ")
        reading = asyncio.create_task(read_answer(reader))
        for _ in range(400):
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.005)
            if reading.done():
                break
        assert (await asyncio.wait_for(reading, 10)).status == 431
        writer.close()


async def test_a_body_trickled_past_the_body_deadline_gets_408_and_the_connection_closes() -> None:
    """A byte now and then keeps the keep-alive clock young; the body deadline does not restart."""
    async with running(body_timeout=1.5) as server:
        reader, writer = await server.connect()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        reading = asyncio.create_task(read_answer(reader))
        for _ in range(60):
            writer.write(b"x")
            await asyncio.sleep(0.5)
            if reading.done():
                break
        answer = await asyncio.wait_for(reading, 10)
        assert answer.status == 408 and orjson.loads(answer.body)["error"]["code"] == "request_timeout"
        assert await closed(reader)
        writer.close()
        assert server.rec.seen == []


def _write_until_stalled(port: int, wire: bytes, after: bytes) -> tuple[socket.socket, int]:
    """Send `after` then as much of `wire` as the server reads; the bytes sent when writing stalls (no
    progress for 3 s) or all went out."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.sendall(after)
    sock.settimeout(3.0)
    sent = 0
    view = memoryview(wire)
    while sent < len(wire):
        try:
            sent += sock.send(view[sent : sent + 65536])
        except TimeoutError:
            break
    return sock, sent


async def test_a_pipelining_client_cannot_make_the_server_read_far_ahead_of_the_request_being_answered() -> (
    None
):
    body = b"x" * (512 * 1024)
    pipelined = b"".join(request("/echo", body) for _ in range(12))  # 6 MiB behind a held request
    async with running(connection_buffer=16 * 1024, max_body=1024 * 1024) as server:
        sock, sent = await asyncio.to_thread(_write_until_stalled, server.port, pipelined, request("/held"))
        try:
            assert sent < len(pipelined) / 2  # the server stopped reading: the kernel buffers filled
            assert server.rec.seen == ["/held"]
            server.rec.release.set()  # answered: reading resumes, and every request is answered in order
            rest = threading.Thread(target=sock.sendall, args=(pipelined[sent:],), daemon=True)
            sock.settimeout(60)
            rest.start()
            assert await asyncio.to_thread(_read_answers, sock, 13) == 13
        finally:
            sock.close()


def _read_answers(sock: socket.socket, count: int) -> int:
    data = b""
    while data.count(b"HTTP/1.1 200 OK") < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return data.count(b"HTTP/1.1 200 OK")


async def test_request_bytes_held_beyond_the_worker_limit_get_503_with_retry_after() -> None:
    async with running(worker_buffer=5000, max_body=4096) as server:
        first_r, first_w = await server.connect()
        first_w.write(b"POST /echo HTTP/1.1\r\nContent-Length: 4000\r\n\r\n" + b"x" * 3000)
        await first_w.drain()
        await asyncio.sleep(0.3)
        second_r, second_w = await server.connect()
        second_w.write(b"POST /echo HTTP/1.1\r\nContent-Length: 4000\r\n\r\n" + b"y" * 3000)
        busy = await read_answer(second_r)
        assert busy.status == 503 and busy.headers["retry-after"] == "1"
        assert orjson.loads(busy.body)["error"]["type"] == "service_unavailable_error"
        assert await closed(second_r)
        first_w.write(b"x" * 1000)  # the first one's body was kept: it completes
        assert orjson.loads((await read_answer(first_r)).body)["body"] == "x" * 4000
        for w in (first_w, second_w):
            w.close()


async def test_requests_beyond_the_concurrency_limit_get_503_with_retry_after_and_the_connection_stays() -> (
    None
):
    async with running(max_concurrent=1) as server:
        held_r, held_w = await server.connect()
        held_w.write(request("/held"))
        await held_w.drain()
        for _ in range(100):
            if server.rec.seen:
                break
            await asyncio.sleep(0.05)
        reader, writer = await server.connect()
        writer.write(request("/echo", b"one"))
        busy = await read_answer(reader)
        assert busy.status == 503 and busy.headers["retry-after"] == "1"
        error = orjson.loads(busy.body)["error"]
        assert error["type"] == "service_unavailable_error" and error["code"] == "server_busy"
        server.rec.release.set()
        assert (await read_answer(held_r)).status == 200
        started = time.monotonic()
        while True:  # the held request's work after its answer may still count for a moment
            writer.write(request("/echo", b"two"))
            again = await read_answer(reader)
            if again.status == 200 or time.monotonic() - started > 30:
                break
            await asyncio.sleep(0.1)
        assert again.status == 200 and server.rec.seen == ["/held", "/echo"]
        for w in (held_w, writer):
            w.close()


def _unfinished_head(size: int) -> bytes:
    """A request head of about `size` bytes that never ends: whole header lines of 1 KB, no blank line."""
    line = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    return b"GET /echo HTTP/1.1\r\nHost: t\r\n" + line * (size // len(line))


async def _whole_request_answered(server: Server) -> None:
    """A whole request on a fresh connection is answered (it holds nothing while it waits); by then the
    server has also read what was written on the other connections before it."""
    [answer], _ = await ask(server, request("/echo", method="GET"))
    assert answer["status"] == 200


async def test_unfinished_heads_beyond_the_worker_limit_get_503_and_close_and_are_let_go_when_they_end() -> (
    None
):
    """Heads count against the worker's budget as bodies do (4000 connections each holding a 60 KB head,
    every one under the 431 limit, took a worker from 120 MB to 419 MB): three 30 kB heads fit in 100 kB,
    a fourth gets 503 with Retry-After and is closed; a head that ends, or whose connection closes, is let go."""
    head = _unfinished_head(30_000)
    async with running(worker_buffer=100_000) as server:
        held = []
        for _ in range(3):
            reader, writer = await server.connect()
            writer.write(head)
            held.append((reader, writer))
            await _whole_request_answered(server)
        reader, writer = await server.connect()
        writer.write(head)
        busy = await read_answer(reader)
        assert (
            busy.status == 503
            and busy.headers["retry-after"] == "1"
            and busy.headers["connection"] == "close"
        )
        assert error_of({"body": busy.body})["code"] == "server_busy"
        assert await closed(reader)
        writer.close()
        # the first head ends: it is answered, and its bytes are let go, so another unfinished head fits
        first_r, first_w = held.pop(0)
        first_w.write(b"\r\n")
        assert (await read_answer(first_r)).status == 200
        reader, writer = await server.connect()
        writer.write(head)
        await _whole_request_answered(server)
        writer.write(b"\r\n")
        assert (await read_answer(reader)).status == 200  # not refused: it would have had its 503 already
        held.append((reader, writer))
        # every connection closes: their heads are let go, and three unfinished heads fit again
        for _, w in [*held, (first_r, first_w)]:
            w.close()
        await _whole_request_answered(server)
        again = []
        for _ in range(3):
            reader, writer = await server.connect()
            writer.write(head)
            again.append((reader, writer))
            await _whole_request_answered(server)
        for reader, writer in again:
            writer.write(b"\r\n")
            assert (await read_answer(reader)).status == 200
            writer.close()


async def test_complete_heads_queued_behind_a_request_being_answered_count_against_the_worker_limit() -> None:
    """Pipelined requests read ahead of the one being answered hold their heads too (16 of 64 KiB each
    per connection, and nothing bounded them worker-wide): with them queued, an unfinished head elsewhere
    no longer fits and gets 503."""
    big = "".join(f"X-Pad-{i}: {'p' * 1000}\r\n" for i in range(25))  # ~25 kB a head
    async with running(worker_buffer=100_000) as server:
        held_r, held_w = await server.connect()
        held_w.write(request("/held") + b"".join(request("/echo", extra=big) for _ in range(4)))
        await _whole_request_answered(server)
        reader, writer = await server.connect()
        writer.write(_unfinished_head(5_000))
        busy = await read_answer(reader)
        assert busy.status == 503 and busy.headers["retry-after"] == "1"
        assert await closed(reader)
        writer.close()
        server.rec.release.set()  # the queued requests are answered in turn: their heads are let go
        for _ in range(5):
            assert (await read_answer(held_r)).status == 200
        reader, writer = await server.connect()
        writer.write(_unfinished_head(30_000))
        await _whole_request_answered(server)
        writer.write(b"\r\n")
        assert (await read_answer(reader)).status == 200
        for w in (held_w, writer):
            w.close()


async def test_connections_beyond_the_worker_limit_get_503_at_once_and_one_is_taken_once_another_closes() -> (
    None
):
    """A connection costs a file descriptor and memory before it sends a byte: beyond the cap a new one is
    answered 503 with Retry-After before any request and closed at once (uvicorn's --limit-concurrency
    answers 503 too); the connections already taken are served as before."""
    async with running(max_connections=3) as server:
        taken = []
        for _ in range(3):
            reader, writer = await server.connect()
            writer.write(request("/echo", method="GET"))
            assert (await read_answer(reader)).status == 200
            taken.append((reader, writer))
        reader, writer = await server.connect()  # sends nothing: the answer comes first
        raw = await asyncio.wait_for(reader.read(), 5)  # to the close
        writer.close()
        assert raw.startswith(b"HTTP/1.1 503 "), raw[:200]
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"\r\nretry-after: 1\r\n" in head and b"\r\nconnection: close\r\n" in head
        assert orjson.loads(body)["error"]["code"] == "server_busy"
        for reader, writer in taken:  # untouched
            writer.write(request("/echo", method="GET"))
            assert (await read_answer(reader)).status == 200
        taken.pop(0)[1].close()
        statuses = []
        for _ in range(100):  # until the server has seen that close
            reader, writer = await server.connect()
            writer.write(request("/echo", method="GET"))
            try:
                statuses.append((await read_answer(reader)).status)
            except ConnectionError:
                statuses.append(0)  # refused, and the 503 lost to the reset our request caused
            if statuses[-1] == 200:
                taken.append((reader, writer))
                break
            writer.close()
            await asyncio.sleep(0.05)
        assert statuses[-1] == 200 and set(statuses[:-1]) <= {0, 503}, statuses
        for _, writer in taken:
            writer.close()


# -- answers the client does not read -------------------------------------------------------------------

ANSWER = 64 * 1024  # bytes of each /big answer: a small request with a large answer, as GET /metrics
CHUNK = 16 * 1024  # bytes of each event of the endless /flood stream


@dataclass
class _Slow:
    """A server whose app answers GET /big?N with N and padding to ANSWER bytes, and streams /flood until
    the client is gone; the connections the server made, to look at what they buffer."""

    port: int
    conns: list[server_module._Connection]
    seen: list[str] = field(default_factory=list)
    produced: int = 0  # bytes /flood handed to the server
    flood_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        self.seen.append(scope["query_string"].decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/huge":  # one answer of N bytes, written at once
            await send({"type": "http.response.body", "body": b"h" * int(scope["query_string"])})
            return
        if scope["path"] == "/big":
            number = scope["query_string"].rjust(8, b"0")
            await send({"type": "http.response.body", "body": number + b"b" * (ANSWER - len(number))})
            return
        gone = asyncio.ensure_future(receive())  # http.disconnect, once the client is gone
        while not gone.done():
            await send({"type": "http.response.body", "body": b"data: " + b"f" * CHUNK, "more_body": True})
            self.produced += CHUNK
        await send({"type": "http.response.body", "body": b""})
        self.flood_ended.set()

    def only(self) -> server_module._Connection:
        [conn] = self.conns
        return conn

    async def accepted(self) -> server_module._Connection:
        for _ in range(100):
            if self.conns:
                break
            await asyncio.sleep(0.05)
        return self.only()


@contextlib.asynccontextmanager
async def _slow_server(monkeypatch: pytest.MonkeyPatch, **limits: Any) -> AsyncIterator[_Slow]:
    conns: list[server_module._Connection] = []

    class Recorded(server_module._Connection):
        def __init__(self, shared: Any) -> None:
            super().__init__(shared)
            conns.append(self)

    monkeypatch.setattr(server_module, "_Connection", Recorded)
    sock = server_module.listen("127.0.0.1", 0)
    slow = _Slow(sock.getsockname()[1], conns)
    stop = asyncio.Event()
    task = asyncio.create_task(
        server_module.serve(slow.app, sock, limits=replace(LIMITS, **limits), stop=stop)
    )
    try:
        yield slow
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        sock.close()


async def _not_reading(port: int, wire: bytes) -> socket.socket:
    """A client with a small receive buffer that sends `wire` and never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: no window scaling
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, wire)
    return sock


def _buffered_for_queued(conn: server_module._Connection) -> int:
    return sum(e.held + len(e.body) for e in conn.queue)


async def test_a_pipelining_client_that_never_reads_cannot_make_the_server_buffer_its_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """400 pipelined GETs of 45 bytes, each answered with 64 KiB, from a client that reads nothing: the
    server buffered every answer (23 MB in the transport beyond what the kernel took) and went on taking
    requests. Now it stops, one answer past the write buffer's high-water mark: no further request is
    started or read until the client reads; then every answer arrives, in order."""
    count = 400
    wire = b"".join(b"GET /big?%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(count))
    async with _slow_server(monkeypatch) as slow:
        sock = await _not_reading(slow.port, wire)
        try:
            conn = await slow.accepted()
            largest, before = 0, -1
            for _ in range(600):  # until every request was answered, or the server stopped starting them
                await asyncio.sleep(0.05)
                largest = max(largest, conn.transport.get_write_buffer_size())  # type: ignore[union-attr]
                stopped = conn.write_paused and conn.exchange is None and len(slow.seen) == before
                if len(slow.seen) == count or stopped:
                    break
                before = len(slow.seen)
            assert largest <= server_module._WRITE_HIGH_WATER + 2 * ANSWER, (largest, len(slow.seen))
            assert len(slow.seen) < count and conn.read_paused
            # what the queued requests hold is counted, and nothing else is
            assert conn.shared.buffered == conn.buffered == _buffered_for_queued(conn)
            # the client reads: the rest is answered, in order, and the connection stays usable
            sock.setblocking(True)
            sock.settimeout(30)
            numbers = await asyncio.to_thread(_read_big_answers, sock, count)
            assert numbers == list(range(count)) and slow.seen == [str(i) for i in range(count)]
            sock.sendall(b"GET /big?7 HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await asyncio.to_thread(_read_big_answers, sock, 1) == [7]
            assert conn.shared.buffered == 0
        finally:
            sock.close()


def _read_big_answers(sock: socket.socket, count: int) -> list[int]:
    data = bytearray()
    numbers: list[int] = []
    while len(numbers) < count:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed early"
        data += chunk
        while (end := data.find(b"\r\n\r\n")) >= 0 and len(data) >= end + 4 + ANSWER:
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), bytes(data[:100])
            numbers.append(int(data[end + 4 : end + 12]))
            del data[: end + 4 + ANSWER]
    return numbers


async def _lost(conn: server_module._Connection) -> bool:
    for _ in range(200):
        if conn.lost:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_pipelining_client_that_stops_reading_is_disconnected_after_the_write_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With its answers waiting and the next requests queued, such a client held them (and its
    connection) for ever: none of the keep-alive, head or body clocks runs while answers wait to leave."""
    wire = b"".join(b"GET /big?%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(200))
    async with _slow_server(monkeypatch, write_timeout=1.5) as slow:
        sock = await _not_reading(slow.port, wire)
        try:
            conn = await slow.accepted()
            assert await _lost(conn)
            assert conn.shared.buffered == 0 and not conn.shared.connections
        finally:
            sock.close()


async def test_a_close_waiting_for_a_client_that_never_reads_is_ended_after_the_write_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A last answer (Connection: close) the client never reads: the close waited for it to drain for
    ever, the connection with it."""
    wire = b"".join(b"GET /big?%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(99))
    wire += b"GET /big?99 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    async with _slow_server(monkeypatch, write_timeout=1.5) as slow:
        sock = await _not_reading(slow.port, wire)
        try:
            conn = await slow.accepted()
            assert await _lost(conn)
            assert not conn.shared.connections
        finally:
            sock.close()


async def test_a_stream_to_a_client_that_never_reads_stops_its_producer_and_ends_after_the_write_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the client reads nothing the stream's sends wait (so the app stops reading its upstream):
    what it produced stays within what the kernel and the transport's high-water mark hold. After the
    write timeout the connection ends, and the app hears the disconnect (its upstream is cancelled)."""
    async with _slow_server(monkeypatch, write_timeout=2.0) as slow:
        sock = await _not_reading(slow.port, b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            conn = await slow.accepted()
            largest = 0
            for _ in range(1000):  # until the connection ends (or 20 s)
                await asyncio.sleep(0.02)
                if conn.lost:
                    break
                largest = max(largest, conn.transport.get_write_buffer_size())  # type: ignore[union-attr]
            assert largest <= server_module._WRITE_HIGH_WATER + 2 * CHUNK, largest
            # the kernel's buffers (up to 4 MiB of send buffer here) and the transport's: not gigabytes
            assert slow.produced < 8 * 1024 * 1024, slow.produced
            await asyncio.wait_for(slow.flood_ended.wait(), 5)  # the app heard the disconnect
            assert conn.lost and not conn.shared.connections
        finally:
            sock.close()


def _read_steadily(sock: socket.socket, size: int, rate: int) -> int:
    """Read an answer's `size` body bytes at about `rate` bytes a second; the bytes of the body read."""
    sock.settimeout(10)
    data = bytearray()
    while (end := data.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    got = len(data) - end - 4
    start = time.monotonic()
    while got < size:
        chunk = sock.recv(min(32 * 1024, size - got))
        if not chunk:
            break  # cut
        got += len(chunk)
        ahead = got / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    return got


async def test_a_client_reading_a_large_answer_slowly_but_steadily_is_not_cut_by_the_write_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The write timeout bounds the time between two signs of progress (nginx's send_timeout), not how long
    an answer takes to leave: its clock only restarted once the buffer fell below its low-water mark, so a
    client reading 24 MB at 1 MB/s was cut after 7 s (write_timeout 2 s). Here 12 MB at 3 MB/s, with a
    write timeout of 1 s: the answer waits in the transport's buffer for several seconds, draining all along."""
    size, rate = 12 * 1024 * 1024, 3 * 1024 * 1024
    async with _slow_server(monkeypatch, write_timeout=1.0) as slow:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            sock.connect(("127.0.0.1", slow.port))
            sock.sendall(b"GET /huge?%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
            got = await asyncio.to_thread(_read_steadily, sock, size, rate)
            assert got == size
            conn = slow.only()
            assert not conn.lost and conn.write_since is None
        finally:
            sock.close()


async def test_answers_waiting_for_clients_that_do_not_read_are_bounded_per_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the attack review: each connection holds at most one answer past the high-water mark, but
    an answer can be 64 MB, so clients asking for large answers and reading none held gigabytes until their
    write timeout (60 s). Past the worker's `write_buffer`, the connections that have waited longest end:
    six clients each owed 2 MiB against a 4 MiB bound."""
    bound, size = 4 * 1024 * 1024, 2 * 1024 * 1024
    async with _slow_server(monkeypatch, write_timeout=60.0, write_buffer=bound) as slow:
        socks = [await _not_reading(slow.port, b"GET /huge?%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
                 for _ in range(6)]  # fmt: skip
        try:
            for _ in range(200):  # every request answered (or its connection already ended)
                if len(slow.seen) == 6:
                    break
                await asyncio.sleep(0.05)
            held = -1
            for _ in range(100):  # a sweep or two (once a second)
                await asyncio.sleep(0.1)
                live = [c for c in slow.conns if not c.lost and c.transport is not None]
                held = sum(c.transport.get_write_buffer_size() for c in live if c.transport is not None)
                if held <= bound and len(live) < 6:
                    break
            assert held <= bound, held
            assert any(c.lost for c in slow.conns)  # the longest waiting were ended
            assert not all(c.lost for c in slow.conns)  # not everyone: only what the bound needs
        finally:
            for sock in socks:
                sock.close()
