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
