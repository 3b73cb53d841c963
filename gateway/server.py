"""The gateway's HTTP/1.1 server: a lean ASGI server on httptools and uvloop, run by `eduaiq gateway`.

Why not uvicorn here. Serving one trivial ASGI app at concurrency 64 on the
project's 2-core machine, uvicorn (httptools, uvloop) spent about 67 µs of CPU
a request, a bare httptools protocol 22 µs: per request uvicorn parses the URL
twice, lower-cases headers in Python, arms and cancels a keep-alive timer, adds
its default headers, validates every message and writes the response head and
body in two system calls. The gateway's whole budget is a few hundred µs a
request, so that difference is a large share of it (see bench/gateway.py and
the README). The admin API keeps uvicorn (not a hot path, and not open to
unauthenticated clients the way /v1 is); the one-origin quick start (`eduaiq
serve`) runs here, so that its /v1 has the same limits as `eduaiq gateway`.

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
- Content-Length and chunked request bodies, given to the app whole (chunk
  extensions ignored, trailers counted but never given as headers);
  `Expect: 100-continue`; a malformed request gets 400 and the connection is
  closed; an HTTP/1.0 client's streamed answer ends with the close;
- limits on what an unauthenticated client can make a worker hold (`Limits`,
  each an EDUAIQ_ setting): the body (413), the head's bytes and header count
  (431; a single header value is bounded too, although httptools grows it in
  place: the bytes fed while a head stays open are counted), a deadline for
  the body as for the head (408), the bytes a connection reads ahead behind
  the request being answered (reading pauses), the request bytes one worker
  holds before the app has them, unfinished and queued heads as well as
  bodies (503), the requests in progress (503) and the open connections (a
  new one beyond gets 503 before any request and is closed); every 503
  carries Retry-After;
- the response head goes out with the first body bytes, in one write;
  chunked responses when the app gives no length; back-pressure on writes:
  while the client lets its answers pile up (the write buffer above its
  high-water mark) nothing more is read, the next pipelined request is not
  started and a stream's send waits, so a client that never reads holds one
  answer past the mark, not every answer it asked for; answers that have
  not moved for `write_timeout` seconds end the connection (a close
  waiting for its last bytes too), as nginx's send_timeout does;
- `http.disconnect` as soon as the client hangs up (a stream's upstream is
  cancelled at once); writes after that are dropped, as uvicorn drops them;
- the ASGI lifespan; graceful shutdown on SIGTERM or SIGINT (stop accepting,
  let what is in flight finish within the grace period, then the lifespan's
  shutdown, which hands the usage events over); a second signal ends the
  grace period at once; every wait after the stop is bounded and the kernel
  ends a process that outlives its deadline (SIGALRM); N worker processes on
  one listening socket, a worker that dies is replaced, one that outlives the
  deadline is killed, and all are told to stop if the supervisor dies.

Left out on purpose: TLS (the ingress terminates it), HTTP/2, WebSockets and
upgrades (the request is answered over HTTP/1.1, nothing after it is read),
proxy headers, access logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import http
import logging
import math
import os
import resource
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any, NoReturn
from urllib.parse import unquote

import httptools
from starlette.types import ASGIApp, Message, Scope

from core.settings import Settings
from gateway.bounded import bounded
from gateway.errors import ApiError

log = logging.getLogger(__name__)

_MAX_QUEUED = 16  # pipelined requests read ahead of the one being answered; reading pauses beyond
_WRITE_HIGH_WATER = 256 * 1024
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
_OURS = frozenset({b"content-length", b"connection", b"transfer-encoding"})  # the server writes these itself
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_AFTER_CUT = 10.0  # seconds the requests cut at shutdown get to settle and meter what they produced
_SAME_STOP = 1.0  # signals within this many seconds of the first are the same stop, not a second one
# The lifespan shutdown hands the usage events over (gateway/runtime.py bounds each of its steps, ~50 s in
# all, the producer's 35 s of it); beyond this the process ends without the rest of it.
_LIFESPAN_STOP = 55.0
# A process that has not exited this long after the last step should have ended is stuck (a blocked
# event loop, a thread the interpreter waits for at exit): the kernel ends it (SIGALRM, default action).
_EXIT_MARGIN = 15.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client can make a worker hold before the app (and authentication) sees its request, and
    how long its answers may wait for it to read them.

    Each but `write_timeout` is an EDUAIQ_ setting (core/settings.py), documented in docs/operations.md."""

    max_body: int  # bytes of one request's body (413)
    max_header_bytes: int  # bytes of the request line, and of the headers (414, 431)
    max_headers: int  # header lines in one request (431)
    header_timeout: float  # seconds from a head's first byte to its end (408)
    body_timeout: float  # seconds from the end of a head to the end of its body (408)
    connection_buffer: int  # bytes read ahead behind the request being answered; reading pauses beyond
    worker_buffer: int  # request bytes (heads, bodies) the worker holds before the app has them (503 beyond)
    max_concurrent: int  # requests the app is working on in this worker (503 beyond)
    max_connections: int = 4096  # open connections in this worker (a new one beyond: 503 before any request)
    # seconds answers may wait for a client that reads none of them (the connection is then ended); not a
    # setting: a client that reads nothing for a minute is gone or hostile (nginx's send_timeout, 60 s)
    write_timeout: float = 60.0
    # bytes of answers all the connections of a worker may hold waiting for clients that are not reading
    # them (each holds at most one answer past the high-water mark, but an answer can be 64 MB: twenty
    # clients asking for large answers and reading nothing held 1.3 GB); beyond it, once a second, the
    # connections that have waited longest are ended. Not a setting, as write_timeout.
    write_buffer: int = 256 * 1024 * 1024

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(
            max_body=s.max_body_bytes,
            max_header_bytes=s.max_header_bytes,
            max_headers=s.max_header_count,
            header_timeout=s.header_timeout_seconds,
            body_timeout=s.body_timeout_seconds,
            connection_buffer=s.max_connection_buffer_bytes,
            worker_buffer=s.max_worker_buffer_bytes,
            max_concurrent=s.max_concurrent_requests,
            max_connections=s.max_connections,
        )


class _Shared:
    """What the connections of one listening server share."""

    def __init__(self, app: ASGIApp, limits: Limits, keep_alive: float) -> None:
        self.app = app
        self.limits = limits
        self.max_body = limits.max_body
        self.keep_alive = keep_alive
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.closing = False
        self.answering = 0  # app calls in progress on all connections, their work after the response included
        self.buffered = 0  # request bytes (heads, bodies) held on all connections, not yet given to the app
        self.max_connections = _connection_cap(limits.max_connections)
        full = _busy("the gateway has too many open connections; retry shortly")
        self.full_body = full.body()  # the answer to a connection beyond the cap, its date aside
        self.full_head = (
            _STATUS_LINES[503] + b"content-type: application/json\r\nretry-after: %s\r\nconnection: close\r\n"
            b"content-length: %d\r\n" % (full.headers["retry-after"].encode(), len(self.full_body))
        )
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
        that stalled as long); refuse a request whose head or body has taken longer than its deadline.
        Neither deadline restarts with each byte: a trickle cannot hold a connection (or the body it
        has sent so far) for ever. Their clocks stop while the server itself is not reading, which it
        does not while answers wait for the client: those connections (and closes waiting for their
        last bytes) end once their answers have not moved for `write_timeout` seconds (the clock restarts
        whenever the write buffer shrank since the previous sweep: slow but steady readers are served)."""
        now = self.loop.time()
        limits = self.limits
        cutoff = now - self.keep_alive
        head_cutoff, body_cutoff = now - limits.header_timeout, now - limits.body_timeout
        write_cutoff = now - limits.write_timeout
        waiting: list[tuple[float, int, _Connection]] = []
        for conn in list(self.connections):
            if conn.transport is None:
                continue
            if conn.write_since is not None:
                # The clock runs between two signs of progress (nginx's send_timeout), not for the whole
                # wait: a client reading a large answer slowly but steadily drains the buffer all along.
                size = conn.transport.get_write_buffer_size()
                if size < conn.write_seen:
                    conn.write_since = now
                conn.write_seen = size
                if conn.write_since < write_cutoff:
                    # Not close(): it would wait for the buffer to drain, which the client does not let
                    # happen (a zero window is probed for ever). What was buffered for it is dropped.
                    conn.transport.abort()
                    continue
                waiting.append((conn.write_since, size, conn))
            if conn.transport.is_closing():
                continue  # already on its way out (a close waiting for its last bytes to drain)
            if conn.head_since is not None and conn.head_since < head_cutoff and not conn.read_paused:
                conn.too_slow("headers", limits.header_timeout)
            elif conn.body_since is not None and conn.body_since < body_cutoff and not conn.read_paused:
                conn.too_slow("body", limits.body_timeout)
            elif conn.exchange is None and not conn.queue and conn.last_active < cutoff:
                conn.close()
        self._shed(waiting)

    def _shed(self, waiting: list[tuple[float, int, _Connection]]) -> None:
        """Past `write_buffer` bytes of answers waiting for clients, end the connections that have waited
        longest (least progress first) until what is left fits: memory a worker holds for clients that do
        not read stays bounded, whatever the answers' sizes."""
        total = sum(size for _, size, _ in waiting)
        if total <= self.limits.write_buffer:
            return
        for _, size, conn in sorted(waiting, key=lambda w: w[0]):
            if total <= self.limits.write_buffer:
                break
            if conn.transport is not None:
                conn.transport.abort()
            total -= size
        log.warning("answers waiting for clients passed %d bytes: ended the connections waiting longest",
                    self.limits.write_buffer)  # fmt: skip


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
        "held",
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
        self.held = 0  # the head's bytes, held (with the body's) until the app has the request
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
        lines: list[bytes] = []
        for name, value in self.headers:
            lower = name.lower()
            if lower in _OURS:
                if b"\n" in value or b"\r" in value:
                    raise RuntimeError("a response header holds a line break")
                if lower == b"content-length":
                    has_length = True
                else:
                    if lower == b"connection" and value.lower() == b"close":
                        self.keep_alive = False
                    continue  # ours to say or decide, below
            lines += (name, b": ", value, b"\r\n")
        # One scan of the app's header lines for a line break in a name or value (each line ends in exactly
        # one CR LF of ours) instead of four per header: the head of an answer with a dozen headers was a
        # tenth of a request's CPU.
        block = b"".join(lines)
        n = len(lines) >> 2
        if block.count(b"\n") != n or block.count(b"\r") != n:
            raise RuntimeError("a response header holds a line break")
        parts.append(block)
        if not has_length and status not in _NO_BODY_STATUS and status >= 200:
            if not more:
                parts.append(b"content-length: %d\r\n" % length)
            elif self.scope is not None and self.scope["http_version"] == "1.0":
                self.keep_alive = False  # an HTTP/1.0 client knows no chunks: the close ends the body
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
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
        self.limits = shared.limits
        self.loop = shared.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Exchange] = deque()  # parsed and waiting for their turn
        self.exchange: _Exchange | None = None  # being answered
        self.lost = False
        self.write_paused = False  # the write buffer is above its high-water mark: the client is not reading
        self.write_since: float | None = None  # when answers began to wait for the client (pause or close),
        # or last drained (the sweep's restart); write_seen: their bytes the sweep saw last (-1: not yet)
        self.write_seen = -1
        self._drain: asyncio.Future[None] | None = None
        self.last_active = self.loop.time()
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.read_paused = False
        self.refused = False  # a request was refused for its form: read nothing more
        self.head_since: float | None = None  # when the head being parsed began to arrive
        self.body_since: float | None = None  # when the head of the request whose body is arriving ended
        self.buffered = 0  # body bytes held here (queued requests and the one being parsed), not the app's
        self._messages = 0  # requests begun on this connection
        self._head_open = False  # a head has begun and not ended
        self._chunk_open = False  # a chunk of a chunked body has begun and not ended
        self._fields_fed = 0  # bytes of the reads that arrived wholly inside an open head or trailer
        self._head_held = 0  # bytes of the reads that ended inside the open head or trailer, until it ends
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._header_lines = 0
        self._chunk_empty = False  # the open chunk has no data yet: the last one, its trailers to come
        self._body: list[bytes] = []
        self._body_size = 0
        self._current: _Exchange | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        shared = self.shared
        if len(shared.connections) >= shared.max_connections:
            # Refused before it sends a byte: waiting for its request would let idle connections hold the
            # descriptors the cap is for. The 503 is what uvicorn's --limit-concurrency answers; a client
            # whose request crossed it may see a reset instead, which the SDKs retry as they retry a 503.
            self.refused = True
            transport.write(shared.full_head + shared.date() + b"\r\n" + shared.full_body)  # type: ignore[attr-defined]
            transport.close()
            return
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
        inside, begun, body_before = self._fields_open(), self._messages, self._body_size
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
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}", "bad_http_request")
            return
        if self._head_open or (
            self._chunk_open and self._chunk_empty
        ):  # the read ended inside a head/trailer
            size = len(data)
            if inside and self._messages == begun and self._body_size == body_before:
                # httptools hands a header to on_header only once it is whole, and grows its value in place
                # until then (one 96 MiB value was taken whole): a read that began and ended inside an open
                # head (or trailer section) is all header bytes, which bounds what no callback has counted.
                self._fields_fed += size
                if self._fields_fed > self.limits.max_header_bytes:
                    self._too_large_head()
                    return
            elif self._head_held:  # the fields it was held for have ended (a chunk's size line, say)
                self._hold_head(-self._head_held)
            # Until the head ends, its bytes are held (httptools' open field, the URL and headers so far):
            # they count against the worker's budget as bodies do, or 4000 connections each holding a 60 KB
            # head under the 431 limit took 300 MB from one worker. A read in which the head began counts
            # whole (what came before the head in it is not told apart): at most one read too many.
            self._hold_head(size)
            if self.shared.buffered > self.limits.worker_buffer:
                self._refuse(
                    503, "the gateway is holding too many request heads; retry shortly", "server_busy"
                )
                return
        elif self._head_held:
            self._hold_head(-self._head_held)
        if self.exchange is not None or self.queue:
            self._flow()
            if self.queue and self.shared.buffered > self.limits.worker_buffer:
                # requests read ahead hold their heads (and bodies) until their turn: none more is read
                self._refuse(503, "the gateway is holding too many requests; retry shortly", "server_busy")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.shared.connections.discard(self)
        if self.exchange is not None:
            self.exchange.hang_up()
        self.queue.clear()
        self._hold(-self.buffered)  # the open head's bytes, queued requests' heads and bodies
        self._head_held = 0
        self._body = []
        self._body_size = 0
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        """The client lets its answers pile up: read nothing more and start no queued request until it
        reads (a stream's send waits in `drained`); otherwise a pipelining client that never reads made
        the worker buffer every answer it asked for (400 GETs of 45 bytes: 23 MB of answers in the transport)."""
        self.write_paused = True
        if self.write_since is None:
            self.write_since = self.loop.time()
            self.write_seen = -1
        self._flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        # the client reads again; a close still waiting for its last bytes keeps a clock, restarted
        transport = self.transport
        self.write_since = self.loop.time() if transport is not None and transport.is_closing() else None
        self.write_seen = -1
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.exchange is None and self.queue and not self.lost:
            if self.shared.closing:
                self.close()
            else:
                self._next()
        if self.read_paused:
            self._flow()

    async def drained(self) -> None:
        if self.write_paused and not self.lost:
            self._drain = self.loop.create_future()
            await self._drain

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # waits for the buffered answers to drain: bounded by `write_timeout`
            if self.write_since is None:
                self.write_since = self.loop.time()
                self.write_seen = -1

    def too_slow(self, part: str, limit: float) -> None:
        self.head_since = self.body_since = None
        self._refuse(408, f"the request's {part} did not arrive within {limit:g} seconds", "request_timeout")

    # -- what the connection holds --------------------------------------------------------------------
    def _hold(self, size: int) -> None:
        self.buffered += size
        self.shared.buffered += size

    def _hold_head(self, size: int) -> None:
        self._head_held += size
        self.buffered += size
        self.shared.buffered += size

    def _flow(self) -> None:
        """Read ahead behind the request being answered only so far (a pipelining client could otherwise
        make the worker hold many whole bodies per connection); read again once the answers caught up.
        With nothing being answered the request being parsed is next, so reading never pauses then,
        unless the client is not reading its answers (nothing more is read until it does)."""
        if self.refused or self.transport is None:
            return
        ahead = self.exchange is not None or bool(self.queue)
        over = len(self.queue) > _MAX_QUEUED or self.buffered > self.limits.connection_buffer
        if (ahead and over) or self.write_paused:
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
        elif self.read_paused and (not ahead or len(self.queue) <= _MAX_QUEUED // 2):
            self.read_paused = False
            self.transport.resume_reading()
            now = self.loop.time()  # the rest of that head or body waited on us, not on the client
            if self.head_since is not None:
                self.head_since = now
            if self.body_since is not None:
                self.body_since = now

    def _fields_open(self) -> bool:
        """Inside a head, or inside a chunked body's trailer section (a chunk begun with no data yet)."""
        return self._head_open or (self._chunk_open and self._chunk_empty)

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.head_since = self.loop.time()
        self._messages += 1
        self._head_open = True
        self._chunk_open = False
        self._fields_fed = 0
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._header_lines = 0
        self._body = []
        self._body_size = 0
        self._current = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        limit = self.limits.max_header_bytes
        if self._header_bytes > limit:
            self._refuse(414, f"the request line exceeds {limit} bytes", "uri_too_long")
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        self._header_lines += 1
        if self._head_open:
            self._headers.append((name.lower(), value))
        # else a trailer: counted, never given to the app as a header (it would be one the ingress in
        # front never saw, and could neither strip nor check)
        if self._header_bytes > self.limits.max_header_bytes or self._header_lines > self.limits.max_headers:
            self._too_large_head()
            raise httptools.HttpParserError("headers too large")

    def _too_large_head(self) -> None:
        limits = self.limits
        self._refuse(431, f"request headers exceed {limits.max_header_bytes} bytes or {limits.max_headers} "
                     "lines", "headers_too_large")  # fmt: skip

    def on_headers_complete(self) -> None:
        now = self.loop.time()
        self.head_since = None
        self._head_open = False
        self.body_since = now  # cleared by on_message_complete, in this same feed when there is no body
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
        self._current = current = _Exchange(self, scope, parser.should_keep_alive())
        # What was held for the open head gives way to its exact size, held until the app has the request
        # (pipelined requests wait in the queue with their heads).
        current.held = held = self._header_bytes
        held -= self._head_held
        self.buffered += held
        self.shared.buffered += held
        self._head_held = 0
        expects = False
        for name, value in self._headers:
            if name == b"content-length" and value.strip().isdigit() and int(value) > self.shared.max_body:
                self._refuse(413, f"request body is {int(value)} bytes; the limit is {self.shared.max_body}",
                             "request_too_large")  # fmt: skip
                raise httptools.HttpParserError("body too large")
            if name == b"expect" and value.lower() == b"100-continue":
                expects = True
        if expects and self.exchange is None and not self.queue:  # never before a refusal, whatever the order
            self.transport.write(_CONTINUE)  # type: ignore[union-attr]

    def on_chunk_header(self) -> None:
        self._chunk_open = self._chunk_empty = True

    def on_chunk_complete(self) -> None:
        self._chunk_open = False

    def on_body(self, body: bytes) -> None:
        self._chunk_empty = False
        size = len(body)
        self._body_size += size
        self._hold(size)
        if self._body_size > self.shared.max_body:
            self._refuse(413, f"request body exceeds the limit of {self.shared.max_body} bytes",
                         "request_too_large")  # fmt: skip
            raise httptools.HttpParserError("body too large")
        if self.shared.buffered > self.limits.worker_buffer:
            self._refuse(503, "the gateway is holding too many request bodies; retry shortly", "server_busy")
            raise httptools.HttpParserError("worker buffer full")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.body_since = None
        if self._head_held:  # a trailer section held
            self._hold_head(-self._head_held)
        exchange = self._current
        if exchange is None:  # pragma: no cover - llhttp always reports the headers first
            return
        self._current = None
        body = self._body
        exchange.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._body_size = 0
        self._enqueue(exchange)

    # -- answering ----------------------------------------------------------------------------------
    def _refuse(self, status: int, message: str, code: str) -> None:
        """A request refused for its form: answered in its turn, then the connection is closed (what
        follows it on the wire cannot be trusted to start at a request boundary). What the request
        being parsed holds is let go at once."""
        if self.refused:
            return
        self.refused = True
        self.head_since = self.body_since = None
        self._hold(-self._body_size)
        self._body = []
        self._body_size = 0
        exchange = _Exchange(self, None, keep_alive=False)
        exchange.error = _busy(message) if status == 503 else ApiError(status, message, code=code)
        self._enqueue(exchange)

    def _enqueue(self, exchange: _Exchange) -> None:
        self.queue.append(exchange)
        if self.exchange is None:
            self._next()

    def _next(self) -> None:
        if self.exchange is not None or not self.queue or self.lost or self.write_paused:
            return  # (write paused: resume_writing starts it)
        exchange = self.exchange = self.queue.popleft()
        shared = self.shared
        if exchange.scope is not None:
            # the app's from here on: bounded by max_concurrent below
            self._hold(-exchange.held - len(exchange.body))
            if shared.answering >= self.limits.max_concurrent and exchange.error is None:
                exchange.error = _busy(f"the gateway is answering {shared.answering} requests; retry shortly")
        shared.answering += 1
        if self.read_paused:
            self._flow()
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
                if self.read_paused:
                    self._flow()
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
                    log.error("the app returned before finishing its response to %s", _what(exchange))
                else:
                    await self._internal_error(exchange)
        except Exception:
            # The request is named by method and path only: its headers carry the caller's key.
            log.exception("unhandled error answering %s", _what(exchange))
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
        headers = [(b"content-type", b"application/json")]
        headers += [(name.encode(), value.encode()) for name, value in error.headers.items()]
        await exchange.send({"type": "http.response.start", "status": error.status, "headers": headers})
        await exchange.send({"type": "http.response.body", "body": error.body()})


def _busy(message: str) -> ApiError:
    """503 with Retry-After, as OpenAI's SDKs expect of an overloaded server (they retry it)."""
    return ApiError(503, message, code="server_busy", headers={"retry-after": "1"})


def _connection_cap(configured: int) -> int:
    """At most half the worker's file descriptors: the other half stays for what every request needs
    (upstream connections, Redis, Kafka, log files); out of descriptors, upstream connects would fail
    and the accept loop would retry on EMFILE instead of refusing anything."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft // 2 >= configured:
        return configured
    log.warning("at most %d connections per worker (half the file descriptor limit %d), not %d",
                max(1, soft // 2), soft, configured)  # fmt: skip
    return max(1, soft // 2)


def _what(exchange: _Exchange) -> str:
    """A request as the logs may name it: never its headers (Authorization) or body."""
    scope = exchange.scope
    return "a refused request" if scope is None else f"{scope['method']} {scope['path'][:200]!r}"


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
    limits: Limits,
    keep_alive: float = 5.0,
    grace: float = 20.0,
    stop: asyncio.Event | None = None,
    cut: asyncio.Event | None = None,
) -> None:
    """Serve `app` on a listening socket until `stop` is set (or SIGTERM/SIGINT when it is not given),
    then shut down gracefully: requests in flight get `grace` seconds to finish, or until `cut` is set
    (or a second signal arrives). Every wait after the stop is bounded; with signals, the process is
    also ended by the kernel if it is still alive `exit_deadline(grace)` seconds after the first."""
    loop = asyncio.get_running_loop()
    lifespan = _Lifespan(app)
    await lifespan.startup()
    shared = _Shared(app, limits, keep_alive)
    cut = cut or asyncio.Event()
    if stop is None:
        stop = asyncio.Event()
        first: list[float] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal_in_process, loop, stop, cut, first, grace)
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
            await bounded(shared.quiet.wait(), _AFTER_CUT, "settling the requests cut at shutdown")
        if not await bounded(lifespan.shutdown(), _LIFESPAN_STOP, "the app's lifespan shutdown"):
            log.error("stopping without the rest of the lifespan shutdown")


def exit_deadline(grace: float) -> float:
    """Seconds from a stop signal by which a serving process has ended whatever it was doing: the grace
    period, the cut requests' settling, the lifespan shutdown, and a margin."""
    return grace + _AFTER_CUT + _LIFESPAN_STOP + _EXIT_MARGIN


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


def _on_signal_in_process(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, cut: asyncio.Event, first: list[float], grace: float
) -> None:
    """A stop signal to a serving process: stop (or cut), and have the kernel end the process if the
    bounded shutdown is itself stuck (a blocked event loop, a thread the interpreter waits for at exit):
    SIGALRM's default action ends the process without the interpreter's help."""
    first_signal, was_cut = not first, cut.is_set()
    _on_stop_signal(loop, stop, cut, first)
    if first_signal or (cut.is_set() and not was_cut):
        deadline = math.ceil(exit_deadline(0.0 if cut.is_set() else grace))
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(deadline)
        # Two seconds before: every thread's stack into the log (stderr), from faulthandler's own thread,
        # so that a process the kernel has to end says where it was stuck.
        faulthandler.dump_traceback_later(max(1, deadline - 2), exit=False)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(app_factory: Callable[[], ASGIApp], sock: socket.socket, options: dict[str, Any]) -> NoReturn:
    """Serve until stopped, then end the process at once.

    Not `uvloop.run`: after its coroutine it cancels every task left and waits for each to end, then joins
    the default executor's threads, and the interpreter's exit joins every other worker thread, all without
    a bound. A shutdown step `bounded` gave up on (one that swallows its cancellation, a thread waiting on
    a process) then held the process until SIGALRM ended it with a failure code (seen in CI: a worker
    alive minutes after its supervisor was killed). When `serve` returns, the usage events are handed
    over; nothing left is worth waiting for."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    code = 0
    try:
        loop.run_until_complete(serve(app_factory(), sock, **options))
    except BaseException:
        log.exception("gateway worker failed")
        code = 1
    finally:
        logging.shutdown()  # what was logged reaches its handlers; os._exit skips the interpreter's exit
        os._exit(code)


def run(
    app_factory: Callable[[], ASGIApp],
    host: str,
    port: int,
    *,
    workers: int = 1,
    limits: Limits | None = None,
    max_body: int | None = None,
    keep_alive: float = 5.0,
    grace: float = 20.0,
) -> None:
    """Bind, then serve in this process (one worker) or in `workers` forked processes that share the
    socket; SIGTERM or SIGINT stops them all gracefully. A worker that dies is replaced. `limits`
    default to the settings' (`max_body`, when given, replaces theirs)."""
    if limits is None:
        from core.settings import get_settings

        limits = Limits.from_settings(get_settings())
    if max_body is not None:
        limits = replace(limits, max_body=max_body)
    sock = listen(host, port)
    options = {"limits": limits, "keep_alive": keep_alive, "grace": grace}
    if workers <= 1:
        _worker(app_factory, sock, options)
    _supervise(app_factory, sock, options, workers, grace)
    sock.close()


def _supervise(
    app_factory: Callable[[], ASGIApp],
    sock: socket.socket,
    options: dict[str, Any],
    workers: int,
    grace: float,
) -> None:
    """Fork the workers and keep them running until a stop signal; then pass the signal on and wait for
    them within their own exit deadline and a margin, and kill any still alive after it. Workers are
    told by the kernel to stop if this process dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    children: set[int] = set()
    supervisor = os.getpid()
    stopping = False
    deadline = math.inf

    def start() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                import ctypes

                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
                if os.getppid() != supervisor:  # it died before the line above: no signal will come
                    os._exit(0)
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
        nonlocal stopping, deadline
        now = time.monotonic()
        # a second signal cuts in the workers: their deadline moves in, and so does ours
        deadline = min(deadline, now + exit_deadline(0.0 if stopping else grace) + _EXIT_MARGIN)
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        start()
    killed = False
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:  # polled, so that a deadline passes even while no worker exits
            if stopping and not killed and time.monotonic() > deadline:
                log.error("gateway workers %s still running after the shutdown deadline; killing them",
                          sorted(children))  # fmt: skip
                for child in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                killed = True
            time.sleep(0.1)
            continue
        if pid not in children:
            continue  # not a worker (only possible were this process a child subreaper)
        children.discard(pid)
        if stopping and (code := os.waitstatus_to_exitcode(status)) != 0 and not killed:
            log.error("gateway worker %d ended its shutdown with %d (a signal when negative)", pid, code)
        if not stopping:
            log.error(
                "gateway worker %d exited (%s); starting another", pid, os.waitstatus_to_exitcode(status)
            )
            time.sleep(0.5)
            start()
