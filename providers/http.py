"""The upstream HTTP/1.1 client of the request path: a keep-alive connection pool on asyncio protocols.

Every request a student makes is also a request to a model server, so this
client's CPU per request is part of the gateway's. A general-purpose client
(aiohttp) spent about a quarter of the gateway's CPU here (measured with
py-spy under `bench/gateway.py`): it builds multidicts, payload objects, tracing
hooks and timers per request. This one writes the request in one buffer,
parses the answer with httptools (the parser uvicorn uses) and hands body
bytes over as they arrive, which is all a gateway relaying JSON and SSE needs.

What it does: HTTP and HTTPS (system trust store), Content-Length and chunked
bodies (and bodies ended by the server closing), keep-alive reuse per
(scheme, host, port) with an idle limit, a connect timeout and a timeout for
each read, back-pressure (reading pauses while a caller has not taken 1 MiB),
and one retry on a fresh connection when a reused one turns out to have been
closed by the server before it answered. What it leaves out on purpose:
redirects, cookies, proxies, compression (it never asks for it), HTTP/2.
Tools off the request path (`eduaiq selfhost register`) use aiohttp.

Bounds (`PoolLimits`, from the EDUAIQ_UPSTREAM_MAX_* settings in the gateway): open connections per
upstream host (a caller past it waits, within its connect timeout, for one to come free: a slow model
server cannot make the gateway open sockets without end), and the bytes of a non-stream answer, of one
server-sent event and of a whole stream (the router enforces the last two while relaying): a model
server, or whatever an admin pointed a provider at, cannot make the gateway hold or relay without end.

With an `UpstreamPolicy`, every address a host name resolves to is checked before connecting: loopback,
private and link-local addresses only where the operator allowed them. This runs once per new
connection, not per request (connections are kept alive), and it is the check a host name that resolves
differently tomorrow cannot pass by (the compile-time check sees only address literals).

Every failure is a `ConnectionError` (an `OSError`) or a `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from providers.upstream_policy import UpstreamPolicy

_HIGH_WATER = 1 << 20
_MAX_HEAD = 64 * 1024  # PoolLimits.max_head_bytes
_USER_AGENT = b"eduaiq"


class UpstreamConnectionError(ConnectionError):
    """The upstream could not be reached, or broke the connection or the protocol."""


class UpstreamTooLarge(UpstreamConnectionError):
    """The upstream's answer (or one of its events) is larger than the pool's limits allow."""


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Defaults are the settings' (core/settings.py EDUAIQ_UPSTREAM_MAX_*)."""

    max_connections_per_host: int = 512
    max_response_bytes: int = 64 * 1024 * 1024
    max_event_bytes: int = 8 * 1024 * 1024
    max_stream_bytes: int = 256 * 1024 * 1024
    # Whole answers (non-stream) held at once by one pool, i.e. one gateway worker: each is capped above,
    # but twenty 60 MB answers at once took a worker to 3 GB (an upstream an institution admin named, or a
    # broken model server). Beyond it the answer being read is dropped (lost after its 200: billed at its
    # bound, as any answer lost after the model ran).
    max_buffered_bytes: int = 512 * 1024 * 1024
    # The status line and headers of one answer: httptools grows a header value by concatenation (20 MiB
    # in 64 KB reads cost 2.9 s of the event loop), for as long as the provider's first_byte timeout allows.
    max_head_bytes: int = _MAX_HEAD


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; one exchange at a time."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[], None] | None = None,
        max_head: int = _MAX_HEAD,
    ) -> None:
        self.loop = loop
        self.on_lost = on_lost
        self.max_head = max_head
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = False  # any byte of the answer
        self.headers_done = False
        self.head_bytes = 0  # bytes of the reads that ended inside the head
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectionError(f"malformed HTTP response from upstream: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        if not self.headers_done:  # the whole read was head: bounded before the parser's copies grow
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head:
                self._fail(
                    UpstreamTooLarge(
                        f"upstream answer's status line and headers larger than {self.max_head} bytes"
                    )
                )
                if self.transport is not None:
                    self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.on_lost is not None:
            self.on_lost()  # the pool's count of open connections to this host
            self.on_lost = None
        if self.complete:
            return
        close_delimited = (
            self.headers_done
            and "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )
        if close_delimited:
            self.complete = True
            self._wake()
        else:
            reason = f": {exc}" if exc else ""
            self._fail(UpstreamConnectionError(f"upstream closed the connection{reason}"))

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # llhttp answers this only before it resets
        self._wake()

    # -- the client side ----------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def wait(self, within: float | None, deadline: float | None = None) -> None:
        """Until the parser has something new (or the connection failed, or `within` seconds passed,
        or the loop's clock reached `deadline`). A timer on the future, not `asyncio.timeout`: this
        runs for every chunk of every stream."""
        if self.error is not None:
            raise self.error
        at = None if within is None else self.loop.time() + within
        if deadline is not None and (at is None or deadline < at):
            at = deadline
        waiter = self.loop.create_future()
        self.waiter = waiter
        timer = None if at is None else self.loop.call_at(at, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return (
            self.complete
            and not self.lost
            and self.error is None
            and self.transport is not None
            and not self.transport.is_closing()
            and self.keep_alive
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("upstream read timed out"))


class Response:
    """An answer being received. Read it to the end and `release()` it, or `close()` it."""

    __slots__ = ("_conn", "_pool", "_read_timeout", "deadline", "headers", "key", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        key: tuple[str, str, int],
        conn: _Connection,
        read_timeout: float | None,
        deadline: float | None,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout
        # The request's overall deadline (loop clock) still applies to reads until the caller clears it.
        self.deadline = deadline
        self.key = key
        self.status = conn.status
        self.headers = conn.headers

    async def readany(self) -> bytes:
        """The body bytes that have arrived (waiting for some); b"" at the end of the body."""
        conn = self._conn
        if conn is None:
            return b""
        while not conn.chunks:
            if conn.complete:
                return b""
            await conn.wait(self._read_timeout, self.deadline)
        return conn.take()

    async def read_whole(self, max_bytes: int) -> bytes:
        """The whole body; UpstreamTooLarge as soon as it passes `max_bytes`, or as soon as the whole answers
        this pool is reading pass `max_buffered_bytes` together (nothing more is held)."""
        pool = self._pool
        parts: list[bytes] = []
        size = 0
        try:
            while chunk := await self.readany():
                size += len(chunk)
                pool.buffered += len(chunk)
                if size > max_bytes:
                    raise UpstreamTooLarge(f"upstream answer larger than {max_bytes} bytes")
                if pool.buffered > pool.limits.max_buffered_bytes:
                    raise UpstreamTooLarge(
                        f"the gateway is holding {pool.limits.max_buffered_bytes} bytes of whole answers already"
                    )
                parts.append(chunk)
            return b"".join(parts)
        finally:
            pool.buffered -= size

    async def read(self, limit: int = -1) -> bytes:
        """The whole body, or its first `limit` bytes (the rest is dropped with the connection)."""
        parts: list[bytes] = []
        size = 0
        while limit < 0 or size < limit:
            chunk = await self.readany()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        data = b"".join(parts)
        return data if limit < 0 else data[:limit]

    def release(self) -> None:
        """Done with it: the connection goes back to the pool when the answer was read whole."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._give_back(self.key, conn)

    def close(self) -> None:
        """Drop the connection (a stream abandoned mid-way: the upstream stops generating)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class UpstreamPool:
    """One per process, shared by every router; create and use it inside the serving event loop."""

    def __init__(
        self,
        *,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        limits: PoolLimits | None = None,
        policy: UpstreamPolicy | None = None,
    ) -> None:
        self._keepalive = keepalive
        self._ssl = ssl_context
        self.limits = limits or PoolLimits()
        self.buffered = 0  # bytes of whole answers being read (read_whole), against limits.max_buffered_bytes
        self._policy = policy
        self._open: dict[tuple[str, str, int], int] = {}
        self._slot_waiters: dict[tuple[str, str, int], deque[asyncio.Future[None]]] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[tuple[str, str], tuple[tuple[str, str, int], bytes]] = {}
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        overall_timeout: float | None = None,
    ) -> Response:
        """Send one request and return once the answer's status and headers are in.

        `read_timeout` bounds each wait for bytes; `overall_timeout` bounds the whole exchange from now (the
        connection, the headers, and every read until the response's `deadline` is cleared). Both are
        timers on the waits themselves: an `asyncio.timeout` around the call was a measurable cost."""
        if self.closed:
            raise UpstreamConnectionError("the upstream connection pool is closed")
        key, start = self._target(method, url)
        fields = "".join([f"\r\n{name}: {value}" for name, value in headers]).encode("latin-1")
        payload = b"".join((start, fields, b"\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        deadline = None
        if overall_timeout is not None:
            loop = self._loop or self._bind()
            deadline = loop.time() + overall_timeout
            connect_timeout = min(connect_timeout or overall_timeout, overall_timeout)
        for attempt in range(2):
            conn, reused = await self._connection(key, connect_timeout)
            conn._reset()
            assert conn.transport is not None
            conn.transport.write(payload)
            try:
                while not conn.headers_done:
                    await conn.wait(read_timeout, deadline)
            except UpstreamConnectionError:
                conn.close()
                if reused and not conn.received and attempt == 0:
                    continue  # the server had closed this idle connection: once more, on a new one
                raise
            except BaseException:
                conn.close()
                raise
            return Response(self, key, conn, read_timeout, deadline)
        raise AssertionError("unreachable")

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The serving loop, looked up once: on Python 3.11 every `get_running_loop()` is a system call."""
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _target(self, method: str, url: str) -> tuple[tuple[str, str, int], bytes]:
        """The pool key and the request's first bytes (request line, Host, User-Agent): the same for
        every request to a deployment, so built once (the host's IDNA encoding alone was ~1% of CPU)."""
        known = self._targets.get((method, url))
        if known is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamConnectionError(f"not an http(s) URL: {url}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"  # IPv6 literal
            start = [f"{method} ".encode(), path.encode(), b" HTTP/1.1\r\nHost: ", host.encode("idna")]
            if port not in (80, 443):
                start.append(b":%d" % port)
            start.append(b"\r\nUser-Agent: " + _USER_AGENT)
            known = ((parts.scheme, parts.hostname, port), b"".join(start))
            if len(self._targets) < 10_000:  # a handful of deployment URLs; never grow without bound
                self._targets[(method, url)] = known
        return known

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self._keepalive:
                return conn
            conn.close()
        return None

    async def _connection(
        self, key: tuple[str, str, int], connect_within: float | None
    ) -> tuple[_Connection, bool]:
        conn = self._take_idle(key)
        if conn is not None:
            return conn, True
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_within):  # TimeoutError: callers tell it apart (504 vs 502)
            while self._open.get(key, 0) >= self.limits.max_connections_per_host:
                await self._wait_for_slot(key, loop)
                conn = self._take_idle(key)
                if conn is not None:
                    return conn, True
            self._open[key] = self._open.get(key, 0) + 1
            try:
                conn = await self._connect(key, loop)
            except BaseException:
                self._lost(key)
                raise
        return conn, False

    async def _connect(self, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop) -> _Connection:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        targets = [host] if self._policy is None else await self._vetted_addresses(host, port, loop)
        error: Exception | None = None
        for target in targets:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, lambda: self._lost(key), self.limits.max_head_bytes), target, port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )  # fmt: skip
                return conn
            except (OSError, UnicodeError) as exc:
                error = exc
        raise UpstreamConnectionError(f"cannot connect to {host}:{port}: {error}") from error

    async def _vetted_addresses(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> list[str]:
        """The addresses `host` resolves to that the operator's policy allows (SSRF: an admin-chosen host
        must not reach loopback, private or link-local services unless the operator said so)."""
        assert self._policy is not None
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name the IDNA codec refuses
            raise UpstreamConnectionError(f"cannot resolve {host}: {exc}") from exc
        allowed: list[str] = []
        refused: list[str] = []
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            (allowed if self._policy.address_allowed(host, ip) else refused).append(address)
        if not allowed:
            raise UpstreamConnectionError(
                f"{host} resolves to {', '.join(refused)}: loopback, private or link-local addresses the "
                "operator has not allowed (EDUAIQ_UPSTREAM_ALLOWED_CIDRS / EDUAIQ_UPSTREAM_ALLOWED_HOSTS)"
            )
        return list(dict.fromkeys(allowed))

    async def _wait_for_slot(self, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._slot_waiters.setdefault(key, deque())
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one(key)  # woken but leaving (timed out): the slot goes to the next in line
            else:
                waiters.remove(waiter)
            raise

    def _wake_one(self, key: tuple[str, str, int]) -> None:
        waiters = self._slot_waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _lost(self, key: tuple[str, str, int]) -> None:
        """A connection to `key` closed (or never opened): its slot goes to the next waiter."""
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        self._wake_one(key)

    def _give_back(self, key: tuple[str, str, int], conn: _Connection) -> None:
        if self.closed or not conn.reusable():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(conn)
        if self._slot_waiters.get(key):
            self._wake_one(key)

    async def close(self) -> None:
        self.closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
