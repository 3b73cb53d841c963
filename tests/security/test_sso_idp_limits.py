"""Security review: the SSO client reached any address an institution's IdP settings named, and read IdP
answers whole with only per-read timeouts.

An institution admin writes `issuer` (and, through its discovery document, `token_endpoint`, `jwks_uri` and
`userinfo_endpoint`) and CAS `server_url`; the admin API fetched them with no address policy, so they could
reach the cloud metadata service or cluster-internal services. Now the SSO client goes through the
operator's upstream address policy (EDUAIQ_UPSTREAM_ALLOWED_CIDRS / _HOSTS, as providers do), checked on
every address a name resolves to before connecting; each IdP answer is capped in bytes and each exchange
bounded by one deadline (EDUAIQ_SSO_IDP_MAX_RESPONSE_BYTES, EDUAIQ_SSO_IDP_TIMEOUT_SECONDS), so a trickling
IdP cannot hold a sign-in open.

The IdPs are real servers on loopback: aiohttp for well-behaved answers, raw asyncio servers for a
listener that records connections and for a trickle.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.sso import CasServer, InstitutionSSO, OidcProvider, StaticRegistry, make_sso_router, mount_sso
from core.settings import Settings
from tests.sso.conftest import SECRET, browser_for, db, redis_client  # noqa: F401  (fixtures)
from tests.sso.support import SP

DEADLINE = 2.0
# Only the fake issuer's own address is allowed: 127.0.0.2 stands for a private service it points at.
ALLOWED = "127.0.0.1/32"
PRIVATE_HOST = "127.0.0.2"


class Listener:
    """A TCP server on a "private" address that counts connections (nothing may connect at all)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str) -> None:
        async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(on_connect, host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(routes: dict[tuple[str, str], Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def private_listener() -> AsyncIterator[Listener]:
    listener = Listener()
    await listener.start(PRIVATE_HOST)
    yield listener
    await listener.stop()


def sso_app(db: async_sessionmaker[AsyncSession], redis: Redis, config: InstitutionSSO) -> FastAPI:  # noqa: F811
    """The SP with the operator's settings: only the fake IdP's address allowed, a short IdP deadline."""
    settings = Settings(public_base_url=SP, session_secret=SECRET, upstream_allowed_cidrs=ALLOWED,
                        upstream_allowed_hosts="", sso_idp_timeout_seconds=DEADLINE,
                        sso_idp_max_response_bytes=64 * 1024)  # fmt: skip
    app = FastAPI()
    mount_sso(app, make_sso_router(registry=StaticRegistry([config]), db=db, redis=redis, settings=settings,
                                   dev_mode=True))  # fmt: skip
    return app


def institution_id() -> str:
    return f"ssolim{uuid.uuid4().hex[:8]}"


async def login_and_callback(app: FastAPI, inst: str) -> tuple[httpx.Response, httpx.Response | None]:
    async with browser_for(app) as browser:
        start = await browser.get(f"{SP}/auth/oidc/{inst}/login")
        if start.status_code != 302:
            return start, None
        state = dict(parse_qsl(urlsplit(start.headers["location"]).query))["state"]
        callback = await browser.get(f"{SP}/auth/oidc/{inst}/callback", params={"state": state, "code": "c"})
        return start, callback


def error_code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["code"])


async def test_a_token_endpoint_on_a_private_address_is_refused_without_connecting(
    private_listener: Listener,
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
) -> None:
    private = f"http://{PRIVATE_HOST}:{private_listener.port}"
    issuer = ""

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer, "authorization_endpoint": f"{issuer}/authorize",
                                  "token_endpoint": f"{private}/token", "jwks_uri": f"{private}/jwks",
                                  "userinfo_endpoint": f"{private}/userinfo"})  # fmt: skip

    runner, issuer = await serve({("GET", "/.well-known/openid-configuration"): discovery})
    inst = institution_id()
    app = sso_app(db, redis_client, InstitutionSSO(institution_id=inst,
                                                   oidc=OidcProvider(issuer=issuer, client_id="x")))  # fmt: skip
    try:
        start, callback = await login_and_callback(app, inst)
    finally:
        await app.state.eduaiq_sso.aclose()
        await runner.cleanup()
    assert start.status_code == 302, start.text  # the issuer itself is on an allowed address
    assert callback is not None and callback.status_code == 502, callback.text
    assert error_code(callback) == "idp_unreachable"
    await asyncio.sleep(0.1)
    assert private_listener.connections == 0


async def test_an_issuer_on_a_private_address_is_refused_without_connecting(
    private_listener: Listener,
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
) -> None:
    inst = institution_id()
    issuer = f"http://{PRIVATE_HOST}:{private_listener.port}"
    app = sso_app(db, redis_client, InstitutionSSO(institution_id=inst,
                                                   oidc=OidcProvider(issuer=issuer, client_id="x")))  # fmt: skip
    try:
        start, _ = await login_and_callback(app, inst)
    finally:
        await app.state.eduaiq_sso.aclose()
    assert start.status_code == 502 and error_code(start) == "idp_unreachable", start.text
    await asyncio.sleep(0.1)
    assert private_listener.connections == 0


async def test_a_cas_server_on_a_private_address_is_refused_without_connecting(
    private_listener: Listener,
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
) -> None:
    inst = institution_id()
    server = f"http://{PRIVATE_HOST}:{private_listener.port}/cas/"
    app = sso_app(db, redis_client, InstitutionSSO(institution_id=inst, cas=CasServer(server_url=server)))
    try:
        async with browser_for(app) as browser:
            start = await browser.get(f"{SP}/auth/cas/{inst}/login")
            assert start.status_code == 302, start.text
            service = dict(parse_qsl(urlsplit(start.headers["location"]).query))["service"]
            resp = await browser.get(httpx.URL(service).copy_add_param("ticket", f"ST-{uuid.uuid4().hex}"))
    finally:
        await app.state.eduaiq_sso.aclose()
    assert resp.status_code == 502 and error_code(resp) == "idp_unreachable", resp.text
    await asyncio.sleep(0.1)
    assert private_listener.connections == 0


async def test_a_huge_discovery_document_is_refused(
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
) -> None:
    """A valid document padded past the cap (64 KiB here, 1 MiB by default) is not read whole."""
    issuer = ""

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer, "authorization_endpoint": f"{issuer}/authorize",
                                  "token_endpoint": f"{issuer}/token", "jwks_uri": f"{issuer}/jwks",
                                  "padding": "x" * (4 * 1024 * 1024)})  # fmt: skip

    runner, issuer = await serve({("GET", "/.well-known/openid-configuration"): discovery})
    inst = institution_id()
    app = sso_app(db, redis_client, InstitutionSSO(institution_id=inst,
                                                   oidc=OidcProvider(issuer=issuer, client_id="x")))  # fmt: skip
    try:
        start, _ = await login_and_callback(app, inst)
    finally:
        await app.state.eduaiq_sso.aclose()
        await runner.cleanup()
    assert start.status_code == 502 and error_code(start) == "idp_unreachable", start.text


async def trickle_server(body_bytes: int | None) -> tuple[asyncio.Server, str]:
    """An HTTP server that sends its headers at once, then one byte every 0.2 s: each read is quick, the
    whole answer never ends (`body_bytes` None: no Content-Length, chunk after chunk)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            length = f"Content-Length: {body_bytes}\r\n" if body_bytes else ""
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}\r\n".encode())
            writer.write(b"{")
            while True:
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.write(b" ")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("body_bytes", [10_000, None])
async def test_a_trickling_discovery_document_is_refused_within_the_deadline(
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
    body_bytes: int | None,
) -> None:
    server, issuer = await trickle_server(body_bytes)
    inst = institution_id()
    app = sso_app(db, redis_client, InstitutionSSO(institution_id=inst,
                                                   oidc=OidcProvider(issuer=issuer, client_id="x")))  # fmt: skip
    began = time.monotonic()
    try:
        async with asyncio.timeout(DEADLINE + 8):  # without a deadline the sign-in would wait for ever
            start, _ = await login_and_callback(app, inst)
    finally:
        await app.state.eduaiq_sso.aclose()
        server.close()
    elapsed = time.monotonic() - began
    assert start.status_code == 502 and error_code(start) == "idp_unreachable", start.text
    assert elapsed < DEADLINE + 2, elapsed


async def test_a_trickling_cas_validation_is_refused_within_the_deadline(
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
) -> None:
    server, base = await trickle_server(None)
    inst = institution_id()
    app = sso_app(
        db, redis_client, InstitutionSSO(institution_id=inst, cas=CasServer(server_url=base + "/cas/"))
    )
    began = time.monotonic()
    try:
        async with asyncio.timeout(DEADLINE + 8), browser_for(app) as browser:
            start = await browser.get(f"{SP}/auth/cas/{inst}/login")
            service = dict(parse_qsl(urlsplit(start.headers["location"]).query))["service"]
            resp = await browser.get(httpx.URL(service).copy_add_param("ticket", f"ST-{uuid.uuid4().hex}"))
    finally:
        await app.state.eduaiq_sso.aclose()
        server.close()
    assert resp.status_code == 502 and error_code(resp) == "idp_unreachable", resp.text
    assert time.monotonic() - began < DEADLINE + 2


def test_defaults_are_bounded() -> None:
    settings: Any = Settings()
    assert settings.sso_idp_max_response_bytes == 1024 * 1024
    assert 0 < settings.sso_idp_timeout_seconds <= 30
