"""A small HTTP/1.1 server on raw asyncio + httptools, for the demo model.

No framework because benchmarks run through the demo model and because the
tests need to kill it abruptly (every connection aborted, as when a GPU
node dies), which a framework's graceful shutdown hides.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
MAX_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Responder:
    """Writes one response on one connection; streaming uses chunked transfer encoding."""

    __slots__ = ("_conn", "_keep_alive", "_streaming", "done")

    def __init__(self, conn: _Connection, keep_alive: bool) -> None:
        self._conn = conn
        self._keep_alive = keep_alive
        self._streaming = False
        self.done = False

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def send(
        self, status: int, body: bytes, content_type: bytes = b"application/json", extra: bytes = b""
    ) -> None:
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
            status,
            REASONS.get(status, b"OK"),
            content_type,
            len(body),
            extra,
            b"" if self._keep_alive else b"Connection: close\r\n",
        )
        self._conn.write(head + body)
        self._finish()

    def start_stream(self, content_type: bytes = b"text/event-stream") -> None:
        self._streaming = True
        self._conn.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n%s\r\n"
            % (content_type, b"" if self._keep_alive else b"Connection: close\r\n")
        )

    def write(self, data: bytes) -> None:
        if data:
            self._conn.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self, data: bytes = b"") -> None:
        if data:
            self._conn.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        else:
            self._conn.write(b"0\r\n\r\n")
        self._finish()

    def abort(self) -> None:
        """Drop the connection without a proper end (a crashed upstream)."""
        self.done = True
        self._conn.abort()

    def _finish(self) -> None:
        self.done = True
        self._conn.request_done(self._keep_alive)


Handler = Callable[[Request, Responder], Awaitable[None] | None]


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler, registry: set[_Connection]) -> None:
        self._handler = handler
        self._registry = registry
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: list[tuple[Request, bool]] = []
        self._busy = False
        self._headers: dict[str, str] = {}
        self._url = b""
        self._header_name = b""
        self._body: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self._registry.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._registry.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.abort()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        method = self._parser.get_method().decode()
        req = Request(method, path, query, self._headers, b"".join(self._body))
        self._pending.append((req, bool(self._parser.should_keep_alive())))
        if not self._busy:
            self._next()

    # dispatch
    def _next(self) -> None:
        while self._pending and not self._busy and not self.closed:
            req, keep_alive = self._pending.pop(0)
            self._busy = True
            responder = Responder(self, keep_alive)
            result = self._handler(req, responder)
            if result is not None:
                self._task = asyncio.ensure_future(self._run(result, responder))
                return

    async def _run(self, coro: Awaitable[None], responder: Responder) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a handler must not hang the client
            if not responder.done and not self.closed:
                responder.send(500, b'{"error":{"message":"%s","type":"server_error"}}' % repr(exc).encode())

    def write(self, data: bytes) -> None:
        if not self.closed and self._transport is not None:
            self._transport.write(data)

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def request_done(self, keep_alive: bool) -> None:
        self._busy = False
        if not keep_alive:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
            return
        if self._pending:
            asyncio.get_running_loop().call_soon(self._next)


class HttpServer:
    """Listens on host:port; `kill()` aborts every connection, `start()` may be called again after."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self.handler, self._conns),
            self.host,
            self.port,
            reuse_address=True,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def running(self) -> bool:
        return self._server is not None

    async def kill(self) -> None:
        """Stop listening and abort every open connection, mid-response or not."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()

    async def close(self) -> None:
        await self.kill()
