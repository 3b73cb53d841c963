"""The gateway's HTTP/1.1 server (gateway/server.py), driven with raw bytes over real sockets.

The server runs in the test's event loop in front of a small ASGI app; every
test writes exact request bytes and reads exact response bytes, so framing,
keep-alive, pipelining, limits, disconnects and shutdown are seen as a client
sees them. The whole gateway runs on this server in every other gateway test.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.rawhttp import MAX_HEADER_BYTES, Answer, closed, read_answer, request, running


async def test_keep_alive_serves_requests_in_turn_on_one_connection() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        for i in range(3):
            writer.write(request(f"/echo/{i}?x={i}", f'{{"n": {i}}}'.encode()))
            answer = await read_answer(reader)
            assert answer.status == 200
            assert "date" in answer.headers and "connection" not in answer.headers
            got = orjson.loads(answer.body)
            assert (got["path"], got["query"], got["body"]) == (f"/echo/{i}", f"x={i}", f'{{"n": {i}}}')
        writer.close()
        assert server.rec.lifespan == ["startup"]
    assert server.rec.lifespan == ["startup", "shutdown"]


async def test_headers_reach_the_app_lower_cased_and_paths_percent_decoded() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/a%20b//c", extra="Authorization: Bearer sk-1\r\nX-Mixed-Case: Yes\r\n"))
        got = orjson.loads((await read_answer(reader)).body)
        assert got["path"] == "/a b//c" and got["raw_path"] == "/a%20b//c"
        assert got["headers"]["authorization"] == "Bearer sk-1"
        assert got["headers"]["x-mixed-case"] == "Yes"
        writer.close()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/slow", b"first") + request("/echo", b"second") + request("/stream"))
        first, second, third = [await read_answer(reader) for _ in range(3)]
        assert orjson.loads(first.body)["body"] == "first"
        assert orjson.loads(second.body)["body"] == "second"
        assert third.body == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
        writer.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=4),
    chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=8),
)
async def test_any_split_of_the_byte_stream_gives_the_same_answers(
    bodies: list[bytes], chunked: bool, cuts: list[int]
) -> None:
    """Requests arrive in whatever pieces TCP delivers: split anywhere (mid request line, mid header,
    mid chunk size), pipelined, Content-Length or chunked bodies, each body reaches the app whole."""
    wire = b""
    for body in bodies:
        if chunked:
            encoded = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
            )
            wire += (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                + encoded
                + b"0\r\n\r\n"
            )
        else:
            wire += request("/echo", body)
    points = sorted({c % len(wire) for c in cuts} - {0})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    async with running() as server:
        reader, writer = await server.connect()
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        for body in bodies:
            answer = await read_answer(reader)
            assert answer.status == 200
            assert orjson.loads(answer.body)["body"] == body.decode("latin-1")
        writer.close()


async def test_a_streamed_answer_is_chunked_and_the_head_goes_out_with_the_first_bytes() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/stream"))
        raw = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head and b"content-length" not in head
        assert body == b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        assert orjson.loads((await read_answer(reader)).body)["body"] == "hello"
        writer.close()


@pytest.mark.parametrize(
    ("wire", "status", "code"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_http_request"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 413, "request_too_large"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + b"x" * 2048 + b"\r\n" * 1
         + b"800\r\n" + b"x" * 2048 + b"\r\n" + b"800\r\n" + b"x" * 2048 + b"\r\n", 413, "request_too_large"),
        (b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n", 431, "headers_too_large"),
        (b"GET /" + b"a" * (MAX_HEADER_BYTES + 1) + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
    ],
)  # fmt: skip
async def test_a_request_refused_for_its_form_gets_a_json_error_and_the_connection_closes(
    wire: bytes, status: int, code: str
) -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(wire)
        answer = await read_answer(reader)
        assert answer.status == status
        assert answer.headers["connection"] == "close"
        error = orjson.loads(answer.body)["error"]
        assert error["code"] == code and error["message"] and "type" in error and "param" in error
        assert await closed(reader)
        writer.close()


async def test_a_refused_request_after_a_good_one_is_answered_after_it() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/slow", b"ok") + b"NOT HTTP\r\n\r\n")
        assert (await read_answer(reader)).status == 200
        assert (await read_answer(reader)).status == 400
        assert await closed(reader)
        writer.close()


async def test_an_app_error_is_a_500_in_the_openai_shape_and_the_server_goes_on() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/crash"))
        answer = await read_answer(reader)
        assert answer.status == 500
        assert orjson.loads(answer.body)["error"]["code"] == "internal_error"
        reader, writer = await server.connect()
        writer.write(request("/echo", b"after"))
        assert (await read_answer(reader)).status == 200
        writer.close()


async def test_a_header_value_with_a_line_break_is_never_written() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/badheader"))
        answer = await read_answer(reader)
        assert answer.status == 500 and "set-cookie" not in answer.headers and "x-evil" not in answer.headers
        writer.close()


async def test_the_app_hears_a_client_hang_up_mid_stream() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/hang"))
        await asyncio.wait_for(reader.readuntil(b"data: first\n\n"), 5)
        writer.close()
        await asyncio.wait_for(server.rec.disconnected.wait(), 5)
        reader, writer = await server.connect()  # and the server serves on
        writer.write(request("/echo"))
        assert (await read_answer(reader)).status == 200
        writer.close()


@pytest.mark.parametrize(
    "wire",
    [
        b"GET /echo HTTP/1.0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n",
    ],
)
async def test_a_client_that_wants_the_connection_closed_gets_it_closed(wire: bytes) -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(wire)
        raw = await asyncio.wait_for(reader.read(), 5)  # to the end: the server closed
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in raw.lower()
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_time() -> None:
    async with running(keep_alive=0.2) as server:
        reader, writer = await server.connect()
        writer.write(request("/echo"))
        assert (await read_answer(reader)).status == 200
        assert await closed(reader)
        writer.close()


async def test_a_head_trickled_in_slower_than_the_header_timeout_gets_408_and_the_connection_closes() -> None:
    """A byte every 0.3 s keeps the keep-alive clock fresh for ever; the head's own deadline does not."""
    async with running(keep_alive=1.0, header_timeout=1.5) as server:
        reader, writer = await server.connect()
        writer.write(request("/echo"))  # a whole request first: the deadline is the next head's own
        assert (await read_answer(reader)).status == 200
        started = asyncio.get_running_loop().time()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\n")
        answer: Answer | None = None
        reading = asyncio.create_task(read_answer(reader))
        for i in range(40):
            done, _ = await asyncio.wait({reading}, timeout=0.3)
            if done:
                answer = reading.result()
                break
            writer.write(b"X-Slow-%d: y\r\n" % i)
        assert answer is not None, "a trickled head was never refused"
        waited = asyncio.get_running_loop().time() - started
        assert answer.status == 408
        assert orjson.loads(answer.body)["error"]["code"] == "request_timeout"
        assert 1.5 <= waited < 4.0
        assert await closed(reader)
        writer.close()


async def test_the_head_clock_stops_while_the_server_is_not_reading_behind_pipelined_requests() -> None:
    """Behind 17 queued requests the server stops reading; a head it had begun parsing then waits on the
    server, not on the client, and must not be refused as slow."""
    async with running(header_timeout=1.5) as server:
        reader, writer = await server.connect()
        whole = request("/held") + b"".join(request("/echo", b"%d" % i) for i in range(17))
        last = request("/echo", b"last")
        writer.write(whole + last[:10])
        await asyncio.sleep(2.6)  # two sweeps past the header timeout while reading is paused
        writer.write(last[10:])
        server.rec.release.set()
        answers = [await read_answer(reader) for _ in range(19)]
        assert [a.status for a in answers] == [200] * 19
        assert orjson.loads(answers[-1].body)["body"] == "last"
        writer.close()


def test_signals_arriving_together_are_one_stop_and_a_later_one_cuts() -> None:
    """A terminal's Ctrl-C reaches every worker as SIGINT while the supervisor passes it on as SIGTERM:
    that is one stop. A signal a moment later is the second one, which cuts."""
    from gateway.server import _on_stop_signal

    loop = asyncio.new_event_loop()
    try:
        stop, cut, first = asyncio.Event(), asyncio.Event(), []  # type: ignore[var-annotated]
        _on_stop_signal(loop, stop, cut, first)
        _on_stop_signal(loop, stop, cut, first)
        assert stop.is_set() and not cut.is_set()
        first[0] -= 1.5  # the first signal, 1.5 s ago
        _on_stop_signal(loop, stop, cut, first)
        assert cut.is_set()
    finally:
        loop.close()


async def test_a_slow_but_steady_head_within_the_header_timeout_is_served() -> None:
    async with running(keep_alive=1.0, header_timeout=3.0) as server:
        reader, writer = await server.connect()
        for part in (b"POST /echo HTTP/1.1\r\n", b"Host: t\r\n", b"Content-Length: 2\r\n", b"\r\nhi"):
            writer.write(part)
            await asyncio.sleep(0.4)
        answer = await read_answer(reader)
        assert answer.status == 200 and orjson.loads(answer.body)["body"] == "hi"
        writer.close()


async def test_shutdown_waits_the_grace_period_for_a_stream_and_a_cut_ends_it_after_the_cut_work() -> None:
    """A stream still running at shutdown keeps going (grace 30 s here) until the cut (a second signal);
    the cut request's own work after the hang-up (settle, meter) still runs before the lifespan's
    shutdown, which closes what that work needs."""
    async with running(grace=30.0) as server:
        reader, writer = await server.connect()
        writer.write(request("/hang"))
        assert (await reader.readuntil(b"data: first\n\n")).startswith(b"HTTP/1.1 200 OK")
        server.stop.set()
        await asyncio.sleep(1.2)
        assert not server.task.done() and not server.rec.disconnected.is_set()  # the stream goes on
        server.cut.set()
        await asyncio.wait_for(server.task, 5)
        assert server.rec.disconnected.is_set()
        assert server.rec.lifespan == ["startup", "hang-settled", "shutdown"]
        rest = await asyncio.wait_for(reader.read(), 5)  # read() returns at the end: the server closed
        assert b"dropped" not in rest and not rest.endswith(b"0\r\n\r\n")  # cut, not ended
        writer.close()


async def test_shutdown_finishes_the_request_in_flight_then_runs_the_lifespan_shutdown() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        idle_reader, idle_writer = await server.connect()
        writer.write(request("/slow", b"in flight"))
        await asyncio.wait_for(server.rec.slow_started.wait(), 5)
        server.stop.set()
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert orjson.loads(answer.body)["body"] == "in flight"
        assert await closed(idle_reader)  # the idle keep-alive connection was closed at once
        await asyncio.wait_for(server.task, 5)
        assert server.rec.lifespan == ["startup", "shutdown"]
        with pytest.raises(OSError):
            await server.connect()
        writer.close()
        idle_writer.close()


async def test_the_next_request_on_a_connection_does_not_wait_for_the_apps_work_after_a_response() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/after"))
        assert (await read_answer(reader)).body == b"answered"
        writer.write(request("/echo", b"next"))
        assert orjson.loads((await read_answer(reader)).body)["body"] == "next"
        assert "after-work" not in server.rec.lifespan  # the first request's app is still working
        server.rec.release.set()
        writer.close()


async def test_shutdown_waits_for_the_apps_work_after_a_response() -> None:
    async with running() as server:
        reader, writer = await server.connect()
        writer.write(request("/after"))
        assert (await read_answer(reader)).body == b"answered"
        server.stop.set()
        await asyncio.sleep(0.2)  # room for a wrong shutdown to run first
        server.rec.release.set()
        await asyncio.wait_for(server.task, 5)
        assert server.rec.lifespan == ["startup", "after-work", "shutdown"]
        writer.close()
