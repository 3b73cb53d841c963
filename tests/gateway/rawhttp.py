"""Raw HTTP/1.1 over real sockets against gateway/server.py running in the test's event loop: a small
ASGI app that records what it saw, the server around it, and a client that writes exact bytes and parses
the answers by hand (tests/gateway/test_server.py and test_server_conformance.py share these)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from gateway.server import Limits, listen, serve

MAX_BODY = 4096
MAX_HEADER_BYTES = 64 * 1024
LIMITS = Limits(
    max_body=MAX_BODY,
    max_header_bytes=MAX_HEADER_BYTES,
    max_headers=100,
    header_timeout=20.0,
    body_timeout=60.0,
    connection_buffer=1024 * 1024,
    worker_buffer=64 * 1024 * 1024,
    max_concurrent=1000,
)


@dataclass
class Recorder:
    lifespan: list[str] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # lets /after finish its work
    seen: list[str] = field(default_factory=list)  # the paths the app was called for, in order


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def _no_response(receive: Receive, send: Send) -> None:
    return None


async def _start_only(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def _partial(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})


async def _raise_after_start(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise ValueError("a bug after the start")


async def _raise_mid_body(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    raise ValueError("a bug mid-answer")


async def _start_twice(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def _body_first(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.body", "body": b"no start"})


async def _after_end(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})
    await send({"type": "http.response.body", "body": b"more"})


async def _returns_value(receive: Receive, send: Send) -> Any:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
    return 123


async def _read_after(receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
    after = await receive()
    assert after["type"] == "http.disconnect", after


async def _no_content(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _app_framing(receive: Receive, send: Send) -> None:  # the server decides the framing
    headers = [(b"transfer-encoding", b"gzip"), (b"connection", b"keep-alive")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"plain", "more_body": False})


MISBEHAVING: dict[str, Callable[[Receive, Send], Awaitable[Any]]] = {
    "/no-response": _no_response,
    "/start-only": _start_only,
    "/partial": _partial,
    "/raise-after-start": _raise_after_start,
    "/raise-mid-body": _raise_mid_body,
    "/start-twice": _start_twice,
    "/body-first": _body_first,
    "/after-end": _after_end,
    "/returns-value": _returns_value,
    "/read-after": _read_after,
    "/no-content": _no_content,
    "/app-framing": _app_framing,
}


def make_app(rec: Recorder) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    rec.lifespan.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    rec.lifespan.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        rec.seen.append(path)
        if path == "/crash":
            raise ValueError("a bug")
        if path in MISBEHAVING:
            await MISBEHAVING[path](receive, send)
            return
        message = await receive()
        body = message["body"]
        if path == "/stream":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
            )
            for part in (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if path == "/hang":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
            assert (await receive())["type"] == "http.disconnect"
            rec.disconnected.set()
            await send({"type": "http.response.body", "body": b"data: dropped\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await asyncio.sleep(0.2)  # what the gateway does after a hang-up: settle, meter
            rec.lifespan.append("hang-settled")
            return
        if path == "/after":  # answers, then goes on working (as the gateway settles and meters)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"answered"})
            await rec.release.wait()
            rec.lifespan.append("after-work")
            return
        if path == "/slow":
            rec.slow_started.set()
            await asyncio.sleep(0.5)
        if path == "/held":  # answers only once the test releases it
            await rec.release.wait()
        if path == "/badheader":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"x-evil", b"a\r\nset-cookie: x")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        answer = orjson.dumps(
            {
                "method": scope["method"],
                "path": path,
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "body": body.decode("latin-1"),  # every byte, back as it came
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


@dataclass
class Server:
    port: int
    rec: Recorder
    stop: asyncio.Event
    cut: asyncio.Event
    task: asyncio.Task[None]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def running(
    keep_alive: float = 5.0, grace: float = 5.0, header_timeout: float = 20.0, **limits: Any
) -> AsyncIterator[Server]:
    rec = Recorder()
    sock = listen("127.0.0.1", 0)
    stop, cut = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(
            make_app(rec),
            sock,
            limits=replace(LIMITS, header_timeout=header_timeout, **limits),
            keep_alive=keep_alive,
            grace=grace,
            stop=stop,
            cut=cut,
        )
    )
    server = Server(sock.getsockname()[1], rec, stop, cut, task)
    for _ in range(100):
        if rec.lifespan:
            break
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP/1.1 response, framed by Content-Length or chunked encoding, parsed by hand."""
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        assert headers.get("transfer-encoding") == "chunked", headers
        parts = []
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            assert chunk.endswith(b"\r\n")
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    return Answer(status, headers, body)


def request(path: str, body: bytes = b"", extra: str = "", method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body
    )


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""
