"""The gateway's ASGI app: /v1 routes, tolerant path handling, and the process lifecycle.

A direct dispatcher rather than a Starlette application: the data plane has
eight fixed routes, and skipping the middleware and routing layers is a
measurable share of a request's CPU (see bench/gateway.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core.settings import Settings, get_settings
from gateway import endpoints, observe
from gateway.errors import ApiError
from gateway.runtime import Runtime

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]
_V1 = ("chat/completions", "completions", "embeddings", "models", "me")
# Requests that are billed: refused while their usage event would have nowhere to go (usage/sidecar.py).
_BILLABLE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_UNMETERED = ApiError(
    503,
    "The gateway cannot record usage right now (its usage pipeline is full or unavailable), so it takes no "
    "new requests; retry shortly.",
    code="usage_pipeline_unavailable",
    headers={"retry-after": "5"},
)


def normalise_path(path: str) -> str:
    """`/v1//chat/completions` (a base URL typed with a trailing slash) and `/chat/completions` (typed
    without /v1) reach the same endpoint: students paste base URLs in every form."""
    while "//" in path:
        path = path.replace("//", "/")
    if not path.startswith("/v1/") and path.lstrip("/") in _V1:
        path = "/v1" + path
    return path


class GatewayRequest(Request):
    """Starlette's request, with the body read by a plain loop rather than its async generator:
    every /v1 request reads a body, and the generator was a measurable share of the gateway's CPU."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            chunks = []
            more = True
            while more:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            self._body = b"".join(chunks)
        return self._body


class GatewayApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = SimpleNamespace(runtime=None)  # endpoints reach the runtime as request.app.state.runtime
        self.routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": endpoints.chat_completions},
            "/v1/completions": {"POST": endpoints.completions},
            "/v1/embeddings": {"POST": endpoints.embeddings},
            "/v1/models": {"GET": endpoints.list_models},
            "/v1/me": {"GET": endpoints.me},
            "/healthz": {"GET": observe.healthz},
            "/readyz": {"GET": observe.readyz},
            "/metrics": {"GET": observe.metrics},
        }

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        runtime = Runtime(self.settings)
        self.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = normalise_path(scope["path"])
        methods = self.routes.get(path)
        if methods is None:
            response = ApiError(404, f"unknown endpoint {scope['path']}", code="not_found").response()
        elif (handler := methods.get(scope["method"])) is None:
            response = ApiError(405, f"method {scope['method']} is not allowed here").response()
        elif path in _BILLABLE and not self._metering():
            response = _UNMETERED.response()
        else:
            scope["app"] = self
            try:
                response = await handler(GatewayRequest(scope, receive))
            except Exception:  # a bug must still answer in the OpenAI shape, and be in the log
                log.exception("unhandled error on %s", path)
                response = ApiError(500, "internal error in the gateway", code="internal_error").response()
        await response(scope, receive, send)

    def _metering(self) -> bool:
        """Never serve unmetered: False while the usage sidecar can take no more events."""
        runtime = self.state.runtime
        return runtime is None or runtime.producer is None or runtime.producer.admitting

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        context = self.lifespan()
        try:
            await context.__aenter__()
        except BaseException as exc:
            log.exception("gateway failed to start")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await context.__aexit__(None, None, None)
        finally:
            await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: Settings | None = None) -> GatewayApp:
    return GatewayApp(settings or get_settings())
