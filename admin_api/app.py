"""The admin API application: the control plane under /api/v1, sign-in under /auth.

`create_app` is the one entry point (the CLI's server command and the tests
call it). Nothing connects at build time; the lifespan closes the pools.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy import text

from admin_api.dashboard import mount_dashboard
from admin_api.errors import ERROR_RESPONSES, install_error_handlers
from admin_api.refusals import audit_refusals
from admin_api.routes import ROUTERS
from admin_api.scim.routes import mount_scim
from admin_api.security_headers import SecurityHeaders
from admin_api.sso import (
    InstitutionSSO,
    LoaderRegistry,
    SSOConfigError,
    SSORegistry,
    make_sso_router,
    mount_sso,
    parse_sso_section,
)
from admin_api.sso.sso_secrets import declared_from
from admin_api.state import AdminState
from core.db import make_async_engine, session_factory
from core.models import Institution
from core.settings import Settings
from gateway.ledger_watch import ledger_complete
from quota import Loader, QuotaEngine
from quota.sources import make_loader

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DESCRIPTION = """
The EduAiQ control plane: units and their budgets, rosters, admins, model policy, providers and prices,
API keys, personal access tokens, usage, budget explanations and the audit log.

Authenticate with the session cookie set by sign-in (`/auth/...`; state-changing requests also send the
`X-CSRF-Token` header) or with a personal access token: `Authorization: Bearer pat-...`.

Money is in integer micro-units of the institution's currency (1 USD = 1000000); prices are micro-units
per 1M tokens. Errors are `{"error": {"code", "message", "details"}}`.
"""


def _registry(state: AdminState) -> SSORegistry:
    # A row imported before EDUAIQ_SSO_SECRET_VARS existed, or edited by hand, meets the operator's current
    # declarations here too: one naming a secret it may not read offers no sign-in.
    declared = declared_from(state.settings)

    async def load(institution_id: str) -> InstitutionSSO | None:
        async with state.sessions() as session:
            inst = await session.get(Institution, institution_id)
        if inst is None or not inst.sso:
            return None
        try:
            return parse_sso_section(institution_id, inst.sso, declared)
        except SSOConfigError as exc:  # the importer checks it; a hand-edited row must not break sign-in
            log.error("institution %s: unusable sso settings: %s", institution_id, exc)
            return None

    return LoaderRegistry(load)


def create_app(
    settings: Settings,
    *,
    dev_login: bool = False,
    quota_loader: Loader | None = None,
    sso_registry: SSORegistry | None = None,
) -> FastAPI:
    """The admin API.

    `dev_login` enables `/auth/dev/login?user=...` (and an ephemeral session secret when none is set).
    `quota_loader` replaces quota's ledger loader (default: `quota.sources.make_loader` on this database),
    which rebuilds counters from the ledger when an edit or a read finds Redis without the institution.
    """
    engine = make_async_engine(settings.database_url)
    redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=settings.redis_socket_timeout,
                           socket_connect_timeout=settings.redis_connect_timeout)  # fmt: skip
    quota = QuotaEngine.from_url(
        settings.redis_url,
        redis_options=settings.redis_options(),
        reservation_ttl=settings.reservation_ttl_seconds,
        min_output_tokens=settings.min_clamp_tokens,
        # A rebuild from here (an edit or an explain finding Redis without the institution) is fenced as a
        # gateway's is: refused while a gateway holds usage events Kafka has not seen (attack review).
        loader=quota_loader
        or make_loader(engine, lambda: ledger_complete(quota.redis, settings, "admin-api")),
    )
    state = AdminState(settings, engine, session_factory(engine), redis, quota)
    sso_router = make_sso_router(
        registry=sso_registry or _registry(state), db=state.sessions, redis=redis, settings=settings,
        dev_mode=dev_login,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await sso_router.service.aclose()
        await state.close()

    app = FastAPI(
        title="EduAiQ admin API",
        version="1",
        description=DESCRIPTION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.eduaiq_admin = state
    app.add_middleware(SecurityHeaders, public_base_url=settings.public_base_url)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    mount_sso(app, sso_router)
    mount_scim(app)  # /scim/v2: the institution's IdP provisions people and groups
    audit_refusals(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(redis.ping(), 2)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"down: {type(exc).__name__}"
        try:
            async with engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("select 1")), 2)
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"down: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
        )

    mount_dashboard(app)  # last: its catch-all must not shadow the API
    return app
