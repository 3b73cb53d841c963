"""The request path's upstream client against raw servers that write exact bytes: reuse, framing, failures."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from providers.http import UpstreamConnectionError, UpstreamPool
from tests.certs import key_pair

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server calling `handler(reader, writer, connection number)`; yields (base URL, connections)."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await handler(reader, writer, len(connections) - 1)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()


async def test_a_connection_is_reused_for_requests_one_after_another() -> None:
    pool = UpstreamPool()
    async with raw_server(answer_each) as (base, connections):
        for _ in range(5):
            r = await pool.request(
                "POST", base + "/v1/chat/completions", [("Content-Type", "application/json")], b"{}"
            )
            assert (r.status, await r.read()) == (200, b"{}")
            r.release()
        assert len(connections) == 1
    await pool.close()


async def test_the_request_is_written_as_http_1_1_with_host_and_length() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()

    pool = UpstreamPool()
    async with raw_server(record) as (base, _):
        r = await pool.request("POST", base + "/v1/x?a=1", [("Authorization", "Bearer k")], b'{"a":1}')
        await r.read()
        r.release()
    await pool.close()
    head, body = seen[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/x?a=1 HTTP/1.1"
    assert b"Host: " + base.split("//")[1].encode() in lines
    assert b"Authorization: Bearer k" in lines and b"Content-Length: 7" in lines
    assert body == b'{"a":1}'


async def test_chunked_and_close_delimited_bodies_are_read_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"data: 1\n\n", b"data: [DONE]\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    pool = UpstreamPool()
    async with raw_server(chunked) as (base, connections):
        r = await pool.request("POST", base + "/a", body=b"{}")
        assert await r.read() == b"data: 1\n\ndata: [DONE]\n\n"
        r.release()
        r = await pool.request("POST", base + "/b", body=b"{}")
        assert await r.read() == b"until the end"
        r.release()
        assert len(connections) == 2  # the first was closed by its handler, so not reused
    await pool.close()


async def test_an_idle_connection_the_server_dropped_is_replaced_once() -> None:
    async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        if n == 0:
            await read_request(reader)  # the next request arrives on the reused connection: no answer
            writer.transport.abort()
            return
        await answer_each(reader, writer, n)

    pool = UpstreamPool()
    async with raw_server(drop_second) as (base, connections):
        for _ in range(2):
            r = await pool.request("POST", base, body=b"{}")
            assert await r.read() == b"{}"
            r.release()
        assert len(connections) == 2
    await pool.close()


async def test_failures_are_connection_errors_or_timeouts() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            writer.write(b"SPDY/9 nonsense\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")  # then silence
        await writer.drain()
        await asyncio.sleep(5)

    pool = UpstreamPool()
    async with raw_server(garbage) as (base, _):
        with pytest.raises(UpstreamConnectionError, match="malformed"):
            await pool.request("POST", base, body=b"{}")
        r = await pool.request("POST", base, body=b"{}", read_timeout=0.2)
        assert await r.readany() == b"abc"
        with pytest.raises(TimeoutError):
            await r.readany()
        r.close()
    with pytest.raises(ConnectionError):
        await pool.request("POST", base, body=b"{}")  # the server is gone
    await pool.close()


async def test_the_overall_timeout_bounds_the_exchange_until_the_caller_clears_it() -> None:
    """A model server that answers at once but then trickles a byte every 0.1 s never trips a 1 s
    read timeout; the request's overall timeout (the router's first-byte or whole-answer limit) does."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            await asyncio.sleep(0.6)  # headers later than the overall timeout
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(12):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    pool = UpstreamPool()
    async with raw_server(trickle) as (base, _):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pool.request("POST", base, body=b"{}", read_timeout=1.0, overall_timeout=0.3)
        assert loop.time() - started < 0.55

        r = await pool.request("POST", base, body=b"{}", read_timeout=1.0, overall_timeout=0.35)
        got = b""
        with pytest.raises(TimeoutError):
            while True:
                got += await r.readany()
        assert 1 <= len(got) < 12  # some bytes came, then the overall deadline passed
        r.close()

        r = await pool.request("POST", base, body=b"{}", read_timeout=1.0, overall_timeout=0.35)
        r.deadline = None  # cleared: only the per-read timeout is left, and the trickle is fast enough
        assert await r.read() == b"x" * 12
        r.release()
    await pool.close()


async def test_a_response_closed_mid_body_is_not_reused() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"cd")
            await writer.drain()

    pool = UpstreamPool()
    async with raw_server(slow) as (base, connections):
        r = await pool.request("POST", base, body=b"{}")
        await r.readany()
        r.release()  # not read whole: closed, never handed to the next request
        r = await pool.request("POST", base, body=b"{}")
        assert await r.read() == b"abcd"
        r.release()
        assert len(connections) == 2
    await pool.close()


def _localhost_cert(directory: Path) -> tuple[Path, Path]:
    key_pem, cert_pem = key_pair("localhost", dns_names=["localhost"])
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_text(cert_pem)
    key_path.write_text(key_pem)
    return cert_path, key_path


async def test_https_verifies_the_server_and_sends_its_name(tmp_path: Path) -> None:
    cert, key = _localhost_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list[bytes] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = UpstreamPool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        r = await trusting.request("POST", f"https://localhost:{port}/v1/chat/completions", body=b"{}")
        assert (r.status, await r.read()) == (200, b"{}")
        r.release()
        await trusting.close()
        assert f"Host: localhost:{port}".encode() in seen[0]
        default = UpstreamPool()  # the system trust store does not know this certificate
        with pytest.raises(ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await default.request("POST", f"https://localhost:{port}/", body=b"{}")
        await default.close()
    finally:
        server.close()


async def test_a_large_body_arrives_whole_through_back_pressure() -> None:
    blob = bytes(range(256)) * (5 * 4096)  # 5 MiB, five times the pool's read buffer

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(blob))
        for i in range(0, len(blob), 65536):
            writer.write(blob[i : i + 65536])
            await writer.drain()

    pool = UpstreamPool()
    async with raw_server(big) as (base, _):
        r = await pool.request("POST", base, body=b"{}")
        got = bytearray()
        while chunk := await r.readany():
            got += chunk
            await asyncio.sleep(0)  # a slow reader: the connection pauses and resumes
        assert bytes(got) == blob
        r.release()
    await pool.close()
