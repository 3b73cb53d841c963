"""Stage 6: pass the upstream's answer through, byte for byte, as it arrives.

A raw ASGI response rather than Starlette's StreamingResponse, for two
reasons: it watches for the client hanging up while the model is still
thinking (so the upstream is cancelled at once, not at the next chunk), and
its clean-up (settle and meter) runs shielded from cancellation, so a client
that disconnects is still charged for what the provider produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import orjson
from starlette.types import Receive, Scope, Send

from providers.errors import UpstreamStreamError
from providers.router import UpstreamResponse

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class StreamResult:
    completed: bool  # the upstream finished and the client got everything
    client_gone: bool
    events: int  # SSE data events passed on: the produced-token count when no usage arrives
    error: str | None = None


class WholeAnswer:
    """A non-stream answer, then `after()` (settle and meter) once it is sent. Starlette's Response with a
    BackgroundTask did the same, rebuilding headers and inspecting the task's function on every request."""

    __slots__ = ("after", "body", "headers")

    def __init__(
        self, body: bytes, headers: list[tuple[bytes, bytes]], after: Callable[[], Awaitable[None]]
    ) -> None:
        self.body = body
        self.headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            *headers,
        ]
        self.after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
        await self.after()


class RelayResponse:
    def __init__(
        self,
        upstream: UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        on_done: Callable[[StreamResult], Awaitable[None]],
    ) -> None:
        self.upstream = upstream
        self.headers = SSE_HEADERS + headers
        self.on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        result = StreamResult(completed=False, client_gone=False, events=0)
        upstream = self.upstream

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    result.client_gone = True
                    await upstream.aclose()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            try:
                async for blob in upstream:
                    result.events += blob.count(b"data: ")
                    await send({"type": "http.response.body", "body": blob, "more_body": True})
                result.completed = not result.client_gone
            except UpstreamStreamError as exc:
                if not result.client_gone:
                    result.error = str(exc)
                    err = {"error": {"message": "the model's server stopped mid-answer; please retry",
                                     "type": "upstream_error", "param": None, "code": "upstream_stream_error"}}  # fmt: skip
                    await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(err) + b"\n\n" + DONE,
                                "more_body": True})  # fmt: skip
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            result.client_gone = True
            result.completed = False
        finally:
            watcher.cancel()
            if not result.completed:
                await upstream.aclose()
            with anyio.CancelScope(shield=True):
                await self.on_done(result)
