"""One origin for the quick start: the gateway's /v1, the admin API's /api/v1, SSO's /auth and the
dashboard at /, in one server. In production the same two apps run as separate deployments."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from core.settings import Settings
from gateway.app import GatewayApp, normalise_path
from gateway.app import create_app as create_gateway

_GATEWAY_PREFIXES = ("/v1", "/healthz", "/readyz", "/metrics")


class OneOrigin:
    def __init__(self, gateway: GatewayApp, admin: Any) -> None:
        self.gateway = gateway
        self.admin = admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        target: ASGIApp = self.admin
        if scope["type"] == "http" and normalise_path(scope["path"]).startswith(_GATEWAY_PREFIXES):
            target = self.gateway
        await target(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start both apps' lifespans, stop them in reverse: the gateway flushes its events last."""
        stack = AsyncExitStack()
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await stack.enter_async_context(self.admin.router.lifespan_context(self.admin))
            await stack.enter_async_context(self.gateway.lifespan())
        except BaseException as exc:
            await stack.aclose()
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        try:
            await stack.aclose()
        finally:
            await send({"type": "lifespan.shutdown.complete"})


def create_one_origin(settings: Settings, *, dev_login: bool = False) -> OneOrigin:
    from admin_api.app import create_app as create_admin

    return OneOrigin(create_gateway(settings), create_admin(settings, dev_login=dev_login))


# `eduaiq dev` stops its web server with SIGTERM and kills it 30 s later: requests in flight get 20 s
# (uvicorn's graceful-shutdown time here before), so the usage of what was cut is still handed over.
QUICK_START_GRACE = 20.0


def serve_one_origin(settings: Settings, host: str, port: int, *, dev_login: bool = False) -> None:
    """The quick start's one origin on the gateway's own HTTP server (gateway/server.py), not uvicorn:
    /v1 there is as open to unauthenticated clients as `eduaiq gateway` is, so it gets the same limits
    (`Limits.from_settings`) by construction. uvicorn could only approximate them: it has no bound on a
    single header value with httptools (h11 bounds the whole head, but not the header count), no
    deadline for a head or a body, and its concurrency limit answers a plain-text 503 without
    Retry-After."""
    import logging

    from gateway.server import Limits, run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s web %(levelname)s %(name)s %(message)s")
    run(lambda: create_one_origin(settings, dev_login=dev_login), host, port,
        limits=Limits.from_settings(settings), grace=min(settings.shutdown_grace_seconds, QUICK_START_GRACE))  # fmt: skip
