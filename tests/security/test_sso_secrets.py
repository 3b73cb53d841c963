"""Security review: an institution file's `sso:` section could name any environment variable as its OIDC
client secret or SAML SP key, and the OIDC relying party sent that variable's value, as HTTP Basic auth, to
whatever token endpoint the issuer's discovery document named: the session secret, PGPASSWORD or another
institution's secret went to an attacker's IdP.

SSO secret variables now follow the provider-key rules (core/declared.py): never a name of the gateway's
own settings or of the database, Redis and Kafka clients, and only names the operator declared for the
institution's sign-in in EDUAIQ_SSO_SECRET_VARS (`[institution:]NAME[*][@host]`, host binding the OIDC
secret to the token endpoint's host). Refused when the section is parsed or imported, and again at use.

The attacker's IdP is a real aiohttp server on loopback that records what reaches its token endpoint.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from aiohttp import web
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.orgfile import OrgFileError, parse_document
from admin_api.sso import InstitutionSSO, OidcProvider, SSOConfigError, StaticRegistry, parse_sso_section
from admin_api.sso.errors import SSOError
from admin_api.sso.oidc import ProviderCache
from core.declared import parse_secret_vars
from core.settings import Settings, SettingsError, load_settings
from tests.sso.conftest import (  # noqa: F401  (fixtures: PostgreSQL and Redis for the SP app)
    browser_for,
    build_app,
    db,
    redis_client,
)
from tests.sso.support import SP, org_document

SESSION_SECRET = "the-deployments-session-secret-" + "s" * 32
NEVER = [
    "EDUAIQ_SESSION_SECRET",
    "EDUAIQ_DATABASE_URL",
    "PGPASSWORD",
    "REDIS_PASSWORD",
    "KAFKA_SASL_PASSWORD",
]


class AttackerIdP:
    """A discovery document naming its own token endpoint, which records every Authorization header."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
        })  # fmt: skip

    async def _token(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization", ""))
        return web.json_response({"error": "invalid_grant"}, status=400)

    def received(self) -> list[str]:
        """The Basic credentials the token endpoint was sent, decoded (`client_id:secret`)."""
        out = []
        for header in self.authorizations:
            if header.startswith("Basic "):
                out.append(base64.b64decode(header[6:]).decode())
        return out


@pytest.fixture
async def attacker() -> AsyncIterator[AttackerIdP]:
    idp = AttackerIdP()
    await idp.start()
    yield idp
    await idp.stop()


async def attempt_sign_in(
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    oidc: OidcProvider,
    institution: str,
    declared: str,
) -> int:
    """The institution's login, then its callback with any code (as an attacker would make the browser do);
    returns the last status."""
    monkeypatch.setenv("EDUAIQ_SSO_SECRET_VARS", declared)
    registry = StaticRegistry([InstitutionSSO(institution_id=institution, oidc=oidc)])
    app = build_app(registry, db, redis)
    try:
        async with browser_for(app) as browser:
            start = await browser.get(f"{SP}/auth/oidc/{institution}/login")
            if start.status_code != 302:
                return start.status_code
            state = dict(parse_qsl(urlsplit(start.headers["location"]).query))["state"]
            callback = await browser.get(f"{SP}/auth/oidc/{institution}/callback",
                                         params={"state": state, "code": "any-code"})  # fmt: skip
            return callback.status_code
    finally:
        await app.state.eduaiq_sso.aclose()


def institution_id() -> str:
    return f"ssosec{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("variable", ["EDUAIQ_SESSION_SECRET", "PGPASSWORD", "OTHER_INST_OIDC_SECRET"])
async def test_a_secret_the_institution_may_not_read_never_reaches_its_idp(
    attacker: AttackerIdP,
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    """The review's attack: the session secret, the database password, and a variable the operator declared
    for another institution (declared with `*` even, which must still not cover these)."""
    inst = institution_id()
    monkeypatch.setenv(variable, SESSION_SECRET)
    oidc = OidcProvider(issuer=attacker.url, client_id="x", client_secret_env=variable)
    status = await attempt_sign_in(db, redis_client, monkeypatch, oidc, inst,
                                   declared="other:OTHER_INST_OIDC_SECRET,other:OTHER_*")  # fmt: skip
    assert all(SESSION_SECRET not in sent for sent in attacker.received()), attacker.received()
    assert status >= 400


async def test_a_secret_bound_to_the_institutions_idp_goes_nowhere_else(
    attacker: AttackerIdP,
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Declared for this institution but bound to its real IdP's host: a discovery document that moves the
    token endpoint elsewhere does not get it."""
    inst = institution_id()
    monkeypatch.setenv("TEST_SSO_BOUND_SECRET", SESSION_SECRET)
    oidc = OidcProvider(issuer=attacker.url, client_id="x", client_secret_env="TEST_SSO_BOUND_SECRET")
    status = await attempt_sign_in(db, redis_client, monkeypatch, oidc, inst,
                                   declared=f"{inst}:TEST_SSO_BOUND_SECRET@login.stateu.example")  # fmt: skip
    assert attacker.received() == []
    assert status >= 400


async def test_a_declared_secret_still_reaches_the_institutions_own_idp(
    attacker: AttackerIdP,
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    redis_client: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: declared for this institution (and bound to the IdP's host), the secret is sent."""
    inst = institution_id()
    monkeypatch.setenv("TEST_SSO_OWN_SECRET", "own-client-secret")
    oidc = OidcProvider(issuer=attacker.url, client_id="x", client_secret_env="TEST_SSO_OWN_SECRET")
    status = await attempt_sign_in(db, redis_client, monkeypatch, oidc, inst,
                                   declared=f"{inst}:TEST_SSO_OWN_SECRET@127.0.0.1")  # fmt: skip
    assert attacker.received() == ["x:own-client-secret"]
    assert status == 401  # the attacker's token endpoint refused the code


def oidc_section(variable: str) -> dict[str, Any]:
    return {
        "oidc": {"issuer": "https://login.stateu.example", "client_id": "x", "client_secret_env": variable}
    }


def saml_section(variable: str) -> dict[str, Any]:
    return {"saml": {"entity_id": "https://idp.stateu.example", "sso_url": "https://idp.stateu.example/sso",
                     "x509_cert": "MIIC" + "A" * 40, "sp_cert": "MIIC" + "B" * 40,
                     "sp_private_key_env": variable}}  # fmt: skip


@pytest.mark.parametrize("variable", NEVER)
@pytest.mark.parametrize(("section", "path"), [(oidc_section, "sso.oidc.client_secret_env"),
                                               (saml_section, "sso.saml.sp_private_key_env")])  # fmt: skip
def test_parse_refuses_the_gateways_own_variables(section: Any, path: str, variable: str) -> None:
    with pytest.raises(SSOConfigError) as caught:
        parse_sso_section("stateu", section(variable), parse_secret_vars("stateu:STATEU_*"))
    assert any(p == path and variable in m for p, m in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(("section", "path"), [(oidc_section, "sso.oidc.client_secret_env"),
                                               (saml_section, "sso.saml.sp_private_key_env")])  # fmt: skip
def test_parse_refuses_undeclared_and_other_institutions_variables(section: Any, path: str) -> None:
    declared = parse_secret_vars("tech:TECH_OIDC_SECRET,stateu:STATEU_OIDC_SECRET")
    for variable in ("TECH_OIDC_SECRET", "SOME_OTHER_SECRET"):
        with pytest.raises(SSOConfigError) as caught:
            parse_sso_section("stateu", section(variable), declared)
        [(where, message)] = caught.value.problems
        assert where == path and variable in message and "EDUAIQ_SSO_SECRET_VARS" in message, message
        assert f"stateu:{variable}" in message  # how to declare it
    assert parse_sso_section("stateu", section("STATEU_OIDC_SECRET"), declared).institution_id == "stateu"
    assert parse_sso_section("tech", section("TECH_OIDC_SECRET"), declared).institution_id == "tech"


def test_parse_refuses_by_default_what_the_operator_has_not_declared() -> None:
    """Without a declared list passed in, the operator's setting applies (the test run declares none for SSO)."""
    with pytest.raises(SSOConfigError, match="EDUAIQ_SSO_SECRET_VARS"):
        parse_sso_section("stateu", oidc_section("STATEU_OIDC_SECRET"))


def test_import_refuses_an_sso_section_naming_the_database_password() -> None:
    doc = {**org_document("stateu"), "sso": oidc_section("PGPASSWORD")}
    with pytest.raises(OrgFileError) as caught:
        parse_document(doc)
    assert any(p == "sso.oidc.client_secret_env" and "PGPASSWORD" in m for p, m in caught.value.problems)


@pytest.mark.parametrize("value", ["PGPASSWORD", "EDUAIQ_SESSION_SECRET", "stateu:EDUAIQ_*", "REDIS*"])
def test_the_setting_refuses_the_gateways_own_variables(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(sso_secret_vars=value)
    monkeypatch.setenv("EDUAIQ_SSO_SECRET_VARS", value)
    with pytest.raises(SettingsError, match="EDUAIQ_SSO_SECRET_VARS"):
        load_settings()


def test_the_setting_shares_the_provider_grammar() -> None:
    settings = Settings(sso_secret_vars="stateu:STATEU_OIDC_SECRET@login.stateu.edu, tech:TECH_*")
    parsed = parse_secret_vars(settings.sso_secret_vars)
    assert [(v.institution, v.name, v.prefix, v.host) for v in parsed] == [
        ("stateu", "STATEU_OIDC_SECRET", False, "login.stateu.edu"),
        ("tech", "TECH_", True, None),
    ]


async def test_an_oidc_client_secret_goes_to_a_token_endpoint_over_https_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the attack review: the binding named a host, not a scheme, so a discovery document naming
    `http://` for its token endpoint got the client secret as Basic auth in clear text."""
    monkeypatch.setenv("STATEU_OIDC_SECRET", "s3cret")
    cfg = OidcProvider(
        issuer="https://login.stateu.edu", client_id="x", client_secret_env="STATEU_OIDC_SECRET"
    )
    async with httpx.AsyncClient() as http:
        cache = ProviderCache(
            http, secret_vars=parse_secret_vars("stateu:STATEU_OIDC_SECRET@login.stateu.edu")
        )
        with pytest.raises(SSOError) as refused:
            cache.client_secret("stateu", cfg, "http://login.stateu.edu/token")
        assert refused.value.code == "sso_secret_refused"
        assert cache.client_secret("stateu", cfg, "https://login.stateu.edu/token") == "s3cret"
