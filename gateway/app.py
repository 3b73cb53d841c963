"""The gateway's ASGI app: /v1 routes, tolerant path handling, and the process lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.settings import Settings, get_settings
from gateway import endpoints, observe
from gateway.errors import ApiError
from gateway.runtime import Runtime

_V1 = ("chat/completions", "completions", "embeddings", "models", "me")


class PathNormaliser:
    """`/v1//chat/completions` (a base URL typed with a trailing slash) and `/chat/completions` (typed
    without /v1) reach the same endpoint: students paste base URLs in every form."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if "//" in path:
                while "//" in path:
                    path = path.replace("//", "/")
            if not path.startswith("/v1/") and path.lstrip("/") in _V1:
                path = "/v1" + path
            if path != scope["path"]:
                scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {
        404: f"unknown endpoint {request.url.path}",
        405: f"method {request.method} is not allowed here",
    }
    return ApiError(
        status, message.get(status, "internal error"), code="not_found" if status == 404 else None
    ).response()


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    routes = [
        Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
        Route("/v1/completions", endpoints.completions, methods=["POST"]),
        Route("/v1/embeddings", endpoints.embeddings, methods=["POST"]),
        Route("/v1/models", endpoints.list_models, methods=["GET"]),
        Route("/v1/me", endpoints.me, methods=["GET"]),
        Route("/healthz", observe.healthz, methods=["GET"]),
        Route("/readyz", observe.readyz, methods=["GET"]),
        Route("/metrics", observe.metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    return app


def create_asgi(settings: Settings | None = None) -> ASGIApp:
    return PathNormaliser(create_app(settings))
