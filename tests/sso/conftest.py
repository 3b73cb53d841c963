"""The service provider under test (in-process, at https://eduaiq.test) and real IdPs on loopback.

The "browser" is an httpx client: requests to https://eduaiq.test go to the app
through ASGI, everything else (the IdPs) over real TCP, and cookies are kept
per origin as a browser would. PostgreSQL and Redis are the real servers from
the shared fixtures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.orgfile import apply_org, parse_document
from admin_api.sso import (
    CasServer,
    InstitutionSSO,
    OidcProvider,
    Principal,
    SamlIdP,
    StaticRegistry,
    csrf_protect,
    make_sso_router,
    mount_sso,
    require_session,
)
from core.db import make_async_engine, session_factory, session_scope
from core.settings import Settings
from tests.certs import key_pair
from tests.sso import idps
from tests.sso.support import SP, org_document

SECRET = "test-session-secret-" + "x" * 40
# The operator's declaration of the OIDC client secrets the test institutions name (EDUAIQ_SSO_SECRET_VARS;
# the IdPs on loopback are allowed by tests/conftest.py's EDUAIQ_UPSTREAM_ALLOWED_CIDRS).
os.environ.setdefault("EDUAIQ_SSO_SECRET_VARS", "TEST_OIDC_SECRET_*")


@pytest.fixture(scope="session")
def sso_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sso")


@pytest.fixture(scope="session")
async def db(pg_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_async_engine(pg_url, pool_size=5)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def registry() -> StaticRegistry:
    return StaticRegistry()


def build_app(
    registry: StaticRegistry,
    db: async_sessionmaker[AsyncSession],
    redis: Redis,
    *,
    dev_mode: bool = True,
    secret: str | None = SECRET,
    base_url: str = SP,
) -> FastAPI:
    app = FastAPI()
    settings = Settings(public_base_url=base_url, session_secret=secret)
    router = make_sso_router(registry=registry, db=db, redis=redis, settings=settings, dev_mode=dev_mode,
                             allowed_origins=["https://admin.eduaiq.test"])  # fmt: skip
    mount_sso(app, router)

    @app.post("/api/v1/echo", dependencies=[Depends(csrf_protect)])
    async def echo(principal: Principal = Depends(require_session)) -> dict[str, str]:
        return {"user": principal.user_id, "institution": principal.institution_id}

    return app


@pytest.fixture(scope="session")
async def app(
    registry: StaticRegistry, db: async_sessionmaker[AsyncSession], redis_client: Redis
) -> AsyncIterator[FastAPI]:
    application = build_app(registry, db, redis_client)
    yield application
    await application.state.eduaiq_sso.aclose()


def browser_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(mounts={SP: httpx.ASGITransport(app=app)}, follow_redirects=False, timeout=60)


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_for(app) as client:
        yield client


async def import_org(db: async_sessionmaker[AsyncSession], doc: dict[str, Any]) -> None:
    org = parse_document(doc)
    async with session_scope(db) as session:
        await apply_org(session, org)


async def query(db: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with session_scope(db) as session:
        return [tuple(r) for r in (await session.execute(text(sql), params)).all()]


@pytest.fixture
async def institution(db: async_sessionmaker[AsyncSession], unique_id: str) -> str:
    """An institution of this test's own (file-granted instructor `prof-file` in cs101, admin of math)."""
    await import_org(db, org_document(unique_id))
    return unique_id


def _inst(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
async def saml_idp(
    sso_workdir: Path, db: async_sessionmaker[AsyncSession], registry: StaticRegistry
) -> AsyncIterator[idps.SamlIdP]:
    inst = _inst("saml")
    await import_org(db, org_document(inst))
    key_pem, cert_pem = key_pair("EduAiQ test IdP")
    idp = idps.start_saml_idp(sso_workdir, inst, SP, key_pem, cert_pem)
    registry.put(InstitutionSSO(
        institution_id=inst,
        saml=SamlIdP(entity_id=idp.entity_id, sso_url=f"{idp.url}/saml/sso", slo_url=f"{idp.url}/saml/slo",
                     x509_cert=cert_pem),
    ))  # fmt: skip
    try:
        yield idp
    finally:
        idp.child.stop()


class OidcSetup:
    def __init__(self, op: idps.OidcOP, institution: str, rogue_institution: str) -> None:
        self.op = op
        self.institution = institution
        self.rogue_institution = rogue_institution


@pytest.fixture(scope="session")
async def oidc_op(
    sso_workdir: Path, db: async_sessionmaker[AsyncSession], registry: StaticRegistry
) -> AsyncIterator[OidcSetup]:
    inst, rogue = _inst("oidc"), _inst("oidcrogue")
    for i in (inst, rogue):
        await import_org(db, org_document(i))
    op = idps.start_oidc_op(sso_workdir, SP, {"eduaiq-sp": [inst], "rogue": [rogue]}, rogue_client="rogue")
    monkey = pytest.MonkeyPatch()
    for client_id, i in (("eduaiq-sp", inst), ("rogue", rogue)):
        env_name = f"TEST_OIDC_SECRET_{i.upper()}"
        monkey.setenv(env_name, op.secrets[client_id])
        registry.put(InstitutionSSO(
            institution_id=i,
            oidc=OidcProvider(issuer=op.issuer, client_id=client_id, client_secret_env=env_name,
                              scopes=["openid", "email", "profile", "eduperson"]),
        ))  # fmt: skip
    try:
        yield OidcSetup(op, inst, rogue)
    finally:
        op.child.stop()
        monkey.undo()


class CasSetup:
    def __init__(self, server: idps.CasServer, institution: str) -> None:
        self.server = server
        self.institution = institution


@pytest.fixture(scope="session")
async def cas_server(
    sso_workdir: Path, db: async_sessionmaker[AsyncSession], registry: StaticRegistry
) -> AsyncIterator[CasSetup]:
    inst = _inst("cas")
    await import_org(db, org_document(inst))
    server = idps.start_cas_server(sso_workdir, r"^https://eduaiq\.test/auth/cas/.*$")
    registry.put(InstitutionSSO(institution_id=inst, cas=CasServer(server_url=server.url)))
    try:
        yield CasSetup(server, inst)
    finally:
        server.child.stop()


@pytest.fixture
def subject(unique_id: str) -> Iterator[str]:
    yield f"{unique_id}@people.test"
