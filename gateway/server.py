"""The gateway's HTTP/1.1 server: a lean ASGI server on httptools and uvloop, run by `eduaiq gateway`.

Why not uvicorn here. Serving one trivial ASGI app at concurrency 64 on the
project's 2-core machine, uvicorn (httptools, uvloop) spent about 67 µs of CPU
a request, a bare httptools protocol 22 µs: per request uvicorn parses the URL
twice, lower-cases headers in Python, arms and cancels a keep-alive timer, adds
its default headers, validates every message and writes the response head and
body in two system calls. The gateway's whole budget is a few hundred µs a
request, so that difference is a large share of it (see bench/gateway.py and
the README). The admin API and the one-origin quick start keep uvicorn: they
are not a hot path.

The gateway app stays a plain ASGI app (the one-origin server mounts it as is),
so this server speaks ASGI too, the part of it the gateway uses:

- HTTP/1.1 and 1.0; keep-alive, closed after `keep_alive` seconds without a
  byte or an answer in progress (one sweep a second for all connections, not a
  timer per request); a request whose head (request line and headers) is not
  whole `header_timeout` seconds after its first byte gets 408 and the
  connection is closed, so a client trickling bytes cannot hold a connection
  for ever (the keep-alive limit alone restarts with every byte); pipelined
  requests answered in order, the next one taken as soon as a response is
  whole on the wire (the app may still be working);
- Content-Length and chunked request bodies, given to the app whole;
  `Expect: 100-continue`; a body limit (413) and a header limit (431); a
  malformed request gets 400 and the connection is closed;
- the response head goes out with the first body bytes, in one write;
  chunked responses when the app gives no length; back-pressure on writes;
- `http.disconnect` as soon as the client hangs up (a stream's upstream is
  cancelled at once); writes after that are dropped, as uvicorn drops them;
- the ASGI lifespan; graceful shutdown on SIGTERM or SIGINT (stop accepting,
  let what is in flight finish within the grace period, then the lifespan's
  shutdown, which hands the usage events over); a second signal ends the
  grace period at once; N worker processes on one listening socket, a worker
  that dies is replaced.

Left out on purpose: TLS (the ingress terminates it), HTTP/2, WebSockets and
upgrades (answered 400), proxy headers, access logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools
from starlette.types import ASGIApp, Message, Scope

from gateway.errors import ApiError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
_MAX_QUEUED = 16  # pipelined requests read ahead of the one being answered; reading pauses beyond
_WRITE_HIGH_WATER = 256 * 1024
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_AFTER_CUT = 10.0  # seconds the requests cut at shutdown get to settle and meter what they produced
_SAME_STOP = 1.0  # signals within this many seconds of the first are the same stop, not a second one


class _Shared:
    """What the connections of one listening server share."""

    def __init__(self, app: ASGIApp, max_body: int, keep_alive: float, header_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.keep_alive = keep_alive
        self.header_timeout = header_timeout
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.closing = False
        self.answering = 0  # app calls in progress on all connections, their work after the response included
        self.quiet = asyncio.Event()  # set when closing and nothing is in progress
        self._date_at = 0
        self._date = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._date

    def sweep(self) -> None:
        """Close keep-alive connections idle for longer than `keep_alive` (and half-sent requests
        that stalled as long); refuse a request whose head has taken longer than `header_timeout`."""
        now = self.loop.time()
        cutoff, head_cutoff = now - self.keep_alive, now - self.header_timeout
        for conn in list(self.connections):
            if conn.transport is None or conn.transport.is_closing():
                continue  # already on its way out (a close waiting for its last bytes to drain)
            if conn.head_since is not None and conn.head_since < head_cutoff and not conn.read_paused:
                conn.head_too_slow(self.header_timeout)
            elif conn.exchange is None and not conn.queue and conn.last_active < cutoff:
                conn.close()


class _Exchange:
    """One request and its answer: the ASGI `receive` and `send` of one HTTP request."""

    __slots__ = (
        "body",
        "body_given",
        "chunked",
        "conn",
        "error",
        "finished",
        "head_only",
        "headers",
        "keep_alive",
        "scope",
        "started",
        "status",
        "waiters",
        "written",
    )

    def __init__(self, conn: _Connection, scope: Scope | None, keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.body = b""
        self.body_given = False
        self.error: ApiError | None = None  # a request refused before the app sees it
        self.started = False  # the app sent its response's start
        self.written = False  # the head is on the wire
        self.finished = False
        self.chunked = False
        self.head_only = scope is not None and scope["method"] == "HEAD"
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.waiters: list[asyncio.Future[None]] = []

    async def receive(self) -> Message:
        if not self.body_given:
            self.body_given = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if not (self.conn.lost or self.finished):
            waiter = self.conn.loop.create_future()
            self.waiters.append(waiter)
            await waiter
        return {"type": "http.disconnect"}

    def hang_up(self) -> None:
        """The client is gone, or the answer is complete: a pending `receive` returns disconnect."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the response has already started")
            self.started = True
            self.status = message["status"]
            self.headers = message.get("headers") or []
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.finished:
            raise RuntimeError("response body sent before its start or after its end")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        conn = self.conn
        if conn.lost:
            if not more:
                self.finished = True
                conn.answered(self)
            return
        if not self.written:  # the head goes out with these first bytes, in one write
            data = self._head(more, len(body))
            self.written = True
            if not self.head_only and body:
                data += b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body
        elif self.head_only or not body:
            data = b""
        else:
            data = b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body
        if not more:
            self.finished = True
            if self.chunked and not self.head_only:
                data += b"0\r\n\r\n"
        if data:
            conn.transport.write(data)  # type: ignore[union-attr]
        if self.finished:
            self.hang_up()
            conn.answered(self)
        elif conn.write_paused:
            await conn.drained()

    def _head(self, more: bool, length: int) -> bytes:
        status = self.status
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, self.conn.shared.date()]
        has_length = False
        for name, value in self.headers:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise RuntimeError("a response header holds a line break")
            lower = name.lower()
            if lower == b"content-length":
                has_length = True
            elif lower == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue  # ours to say, below
            elif lower == b"transfer-encoding":
                continue  # ours to decide, below
            parts.append(b"%s: %s\r\n" % (name, value))
        if not has_length and status not in _NO_BODY_STATUS and status >= 200:
            if more:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                parts.append(b"content-length: %d\r\n" % length)
        if self.conn.shared.closing:
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as bytes arrive, answers them one at a time, in order."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.loop = shared.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Exchange] = deque()  # parsed and waiting for their turn
        self.exchange: _Exchange | None = None  # being answered
        self.lost = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.last_active = self.loop.time()
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.read_paused = False
        self.refused = False  # a request was refused for its form: read nothing more
        self.head_since: float | None = None  # when the head being parsed began to arrive
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._current: _Exchange | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)  # type: ignore[union-attr]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self.server = (local[0], local[1]) if isinstance(local, tuple) else None
        self.shared.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._current is None:  # the request is whole: answered over HTTP/1.1, as RFC 9110 allows
                self.refused = True  # but nothing after it is read (it would be the other protocol)
                last = self.queue[-1] if self.queue else self.exchange
                if last is not None:
                    last.keep_alive = False
            else:
                self._refuse(400, "protocol upgrades are not supported here", "upgrade_not_supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}", "bad_http_request")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.shared.connections.discard(self)
        if self.exchange is not None:
            self.exchange.hang_up()
        self.queue.clear()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drained(self) -> None:
        if self.write_paused and not self.lost:
            self._drain = self.loop.create_future()
            await self._drain

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def head_too_slow(self, limit: float) -> None:
        self.head_since = None
        self._refuse(408, f"the request's headers did not arrive within {limit:g} seconds", "request_timeout")

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.head_since = self.loop.time()
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self._current = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(414, f"the request line exceeds {MAX_HEADER_BYTES} bytes", "uri_too_long")
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, f"request headers exceed {MAX_HEADER_BYTES} bytes", "headers_too_large")
            raise httptools.HttpParserError("headers too large")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_since = None
        parser = self.parser
        method_raw = parser.get_method()
        method = _METHODS.get(method_raw) or method_raw.decode("ascii", "replace")
        url = self._url
        query = b""
        if b"?" in url:
            url, _, query = url.partition(b"?")
        raw_path = url
        path = url.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": {},
        }
        self._current = _Exchange(self, scope, parser.should_keep_alive())
        for name, value in self._headers:
            if name == b"content-length" and value.strip().isdigit() and int(value) > self.shared.max_body:
                self._refuse(413, f"request body is {int(value)} bytes; the limit is {self.shared.max_body}",
                             "request_too_large")  # fmt: skip
                raise httptools.HttpParserError("body too large")
            if (
                name == b"expect"
                and value.lower() == b"100-continue"
                and self.exchange is None
                and not self.queue
            ):
                self.transport.write(_CONTINUE)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.shared.max_body:
            self._refuse(413, f"request body exceeds the limit of {self.shared.max_body} bytes",
                         "request_too_large")  # fmt: skip
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        exchange = self._current
        if exchange is None:  # pragma: no cover - llhttp always reports the headers first
            return
        self._current = None
        body = self._body
        exchange.body = body[0] if len(body) == 1 else b"".join(body)
        self._enqueue(exchange)

    # -- answering ----------------------------------------------------------------------------------
    def _refuse(self, status: int, message: str, code: str) -> None:
        """A request refused for its form: answered in its turn, then the connection is closed (what
        follows it on the wire cannot be trusted to start at a request boundary)."""
        if self.refused:
            return
        self.refused = True
        exchange = _Exchange(self, None, keep_alive=False)
        exchange.error = ApiError(status, message, code=code)
        self._enqueue(exchange)

    def _enqueue(self, exchange: _Exchange) -> None:
        self.queue.append(exchange)
        if len(self.queue) > _MAX_QUEUED and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        if self.exchange is None:
            self._next()

    def _next(self) -> None:
        if self.exchange is not None or not self.queue or self.lost:
            return
        exchange = self.exchange = self.queue.popleft()
        self.shared.answering += 1
        if self.read_paused and len(self.queue) <= _MAX_QUEUED // 2 and not self.refused:
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
            if self.head_since is not None:  # the rest of that head waited on us, not on the client
                self.head_since = self.loop.time()
        self.loop.create_task(self._answer(exchange))

    def answered(self, exchange: _Exchange) -> None:
        """The response is whole on the wire: the connection moves on to the next request at once, while
        the app may still be doing its work after the response (the gateway settles and meters there);
        waiting for that would add a Redis round trip to every keep-alive client's next request."""
        if self.exchange is exchange:
            self.exchange = None
            self.last_active = self.loop.time()
            if exchange.keep_alive and not self.shared.closing:
                self._next()
            else:
                self.close()

    async def _answer(self, exchange: _Exchange) -> None:
        try:
            if exchange.error is not None:
                await self._send_error(exchange, exchange.error)
            else:
                await self.shared.app(exchange.scope, exchange.receive, exchange.send)  # type: ignore[arg-type]
            if not exchange.finished:
                if exchange.written:  # an answer cut short cannot be framed: end the connection
                    log.error("the app returned before finishing its response to %s", exchange.scope)
                else:
                    await self._internal_error(exchange)
        except Exception:
            log.exception("unhandled error answering %s", exchange.scope and exchange.scope.get("path"))
            if not exchange.written:
                await self._internal_error(exchange)
        finally:
            exchange.hang_up()
            if not exchange.finished and self.exchange is exchange:  # cut short: the framing is lost
                self.exchange = None
                self.close()
            self.shared.answering -= 1  # the app's work, after the response too
            if self.shared.closing and not self.shared.answering:
                self.shared.quiet.set()

    @classmethod
    async def _internal_error(cls, exchange: _Exchange) -> None:
        exchange.keep_alive = False
        exchange.started = False  # whatever the app started never reached the wire
        await cls._send_error(exchange, ApiError(500, "internal error in the gateway", code="internal_error"))

    @staticmethod
    async def _send_error(exchange: _Exchange, error: ApiError) -> None:
        await exchange.send({"type": "http.response.start", "status": error.status,
                             "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await exchange.send({"type": "http.response.body", "body": error.body()})


# -- the lifespan ---------------------------------------------------------------------------------------


class _Lifespan:
    """The ASGI lifespan protocol, driven from outside: `startup()`, later `shutdown()`."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._replies: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        await self._replies.put(message)

    async def _step(self, ask: str) -> None:
        assert self._task is not None
        await self._inbox.put({"type": f"lifespan.{ask}"})
        reply = asyncio.ensure_future(self._replies.get())
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            self._task.result()  # the app's own error, if it raised one
            raise RuntimeError(f"the app ended its lifespan without answering {ask}")
        message = reply.result()
        if message["type"].endswith(".failed"):
            raise RuntimeError(f"lifespan {ask} failed: {message.get('message', '')}")

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": {}}
        self._task = asyncio.create_task(self._app(scope, self._receive, self._send))  # type: ignore[arg-type]
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        assert self._task is not None
        await self._task


# -- running ------------------------------------------------------------------------------------------


async def serve(
    app: ASGIApp,
    sock: socket.socket,
    *,
    max_body: int,
    keep_alive: float = 5.0,
    header_timeout: float = 20.0,
    grace: float = 20.0,
    stop: asyncio.Event | None = None,
    cut: asyncio.Event | None = None,
) -> None:
    """Serve `app` on a listening socket until `stop` is set (or SIGTERM/SIGINT when it is not given),
    then shut down gracefully: requests in flight get `grace` seconds to finish, or until `cut` is set
    (or a second signal arrives)."""
    loop = asyncio.get_running_loop()
    lifespan = _Lifespan(app)
    await lifespan.startup()
    shared = _Shared(app, max_body, keep_alive, header_timeout)
    cut = cut or asyncio.Event()
    if stop is None:
        stop = asyncio.Event()
        first: list[float] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_stop_signal, loop, stop, cut, first)
    server = await loop.create_server(lambda: _Connection(shared), sock=sock, backlog=2048)

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(1.0)
            shared.sweep()

    sweeping = asyncio.create_task(sweeper())
    try:
        await stop.wait()
    finally:
        sweeping.cancel()
        server.close()
        shared.closing = True
        for conn in list(shared.connections):
            if conn.exchange is None and not conn.queue:
                conn.close()
        if shared.answering and not cut.is_set():
            waits = {asyncio.ensure_future(shared.quiet.wait()), asyncio.ensure_future(cut.wait())}
            await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        for conn in list(shared.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if shared.answering:
            # What was cut hears the hang-up and cancels its upstream; it still settles and meters what
            # it produced, which must happen before the lifespan shutdown closes Redis and the sidecar.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shared.quiet.wait(), _AFTER_CUT)
        await lifespan.shutdown()


def _on_stop_signal(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, cut: asyncio.Event, first: list[float]
) -> None:
    """The first signal stops; one more, a moment later, cuts. Signals arriving together are one stop:
    a terminal's Ctrl-C reaches every worker as SIGINT while the supervisor passes it on as SIGTERM,
    and systemd signals every process of the unit at once."""
    now = loop.time()
    if not first:
        first.append(now)
    elif now - first[0] >= _SAME_STOP and not cut.is_set():
        log.warning("second stop signal: cutting the requests still in flight")
        cut.set()
    stop.set()


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(app_factory: Callable[[], ASGIApp], sock: socket.socket, options: dict[str, Any]) -> None:
    import uvloop

    uvloop.run(serve(app_factory(), sock, **options))


def run(
    app_factory: Callable[[], ASGIApp],
    host: str,
    port: int,
    *,
    workers: int = 1,
    max_body: int,
    keep_alive: float = 5.0,
    header_timeout: float = 20.0,
    grace: float = 20.0,
) -> None:
    """Bind, then serve in this process (one worker) or in `workers` forked processes that share the
    socket; SIGTERM or SIGINT stops them all gracefully. A worker that dies is replaced."""
    sock = listen(host, port)
    options = {
        "max_body": max_body,
        "keep_alive": keep_alive,
        "header_timeout": header_timeout,
        "grace": grace,
    }
    if workers <= 1:
        _worker(app_factory, sock, options)
        return
    children: set[int] = set()
    stopping = False

    def start() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                import ctypes

                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _worker(app_factory, sock, options)
            except BaseException:
                log.exception("gateway worker failed")
                code = 1
            finally:
                os._exit(code)
        children.add(pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        start()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue  # not a worker (only possible were this process a child subreaper)
        children.discard(pid)
        if not stopping:
            log.error(
                "gateway worker %d exited (%s); starting another", pid, os.waitstatus_to_exitcode(status)
            )
            time.sleep(0.5)
            start()
    sock.close()
