"""OpenID Connect against a real provider (npm oidc-provider): code + PKCE, mapping, refused tokens."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.sso import browse
from tests.sso.conftest import OidcSetup, browser_for, query
from tests.sso.support import SP


def refused(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    assert "eduaiq_session" not in resp.cookies
    return dict(error["details"])


def with_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_login_with_pkce_maps_claims(
    browser: httpx.AsyncClient, oidc_op: OidcSetup, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    inst = oidc_op.institution
    oidc_op.op.add_account(subject, {
        "email": f"mail-{subject}", "email_verified": True, "name": "Olivia Oidc",
        "eduperson_principal_name": subject,
        "eduperson_affiliation": ["faculty", "member"],
        "eduperson_entitlement": [f"urn:mace:{inst}:course:cs102:instructor", f"urn:mace:{inst}:unit:cs:auditor"],
        "groups": ["course:cs101:ta"],
    })  # fmt: skip
    start = await browser.get(f"{SP}/auth/oidc/{inst}/login")
    authorize = dict(parse_qsl(urlsplit(start.headers["location"]).query))
    assert authorize["code_challenge_method"] == "S256" and len(authorize["code_challenge"]) >= 43
    assert authorize["nonce"] and authorize["state"] and "code_verifier" not in authorize

    callback = await browse.oidc_callback_url(browser, inst, subject)
    resp = await browser.get(callback)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/after-login"

    users = await query(db, "select id, email, name from app_user where institution_id=:i and sso_subject=:s",
                        i=inst, s=subject)  # fmt: skip
    assert users == [(subject, f"mail-{subject}", "Olivia Oidc")]
    members = await query(db, "select unit_id, role, source from membership where institution_id=:i and "
                          "user_id=:u order by unit_id", i=inst, u=subject)  # fmt: skip
    assert members == [("cs101", "ta", "sso"), ("cs102", "instructor", "sso")]
    scopes = await query(db, "select unit_id, role from admin_scope where institution_id=:i and user_id=:u",
                         i=inst, u=subject)  # fmt: skip
    assert scopes == []  # admin roles from the IdP are off by default (issue 17 item 6)
    who = (await browser.get(f"{SP}/auth/session")).json()
    assert who["principal"]["method"] == "oidc" and who["principal"]["user_id"] == subject

    out = await browser.post(f"{SP}/auth/logout", headers={"X-CSRF-Token": browser.cookies["eduaiq_csrf"]})
    assert out.json()["redirect"].startswith(f"{oidc_op.op.issuer}/session/end?")
    assert "id_token_hint=" in out.json()["redirect"]


async def test_token_with_a_wrong_nonce_is_refused(
    browser: httpx.AsyncClient, oidc_op: OidcSetup, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    """An authorization code obtained with another nonce (code injection) does not sign anyone in."""
    inst = oidc_op.institution
    oidc_op.op.add_account(subject, {"eduperson_principal_name": subject})
    callback = await browse.oidc_callback_url(browser, inst, subject,
                                              tamper=lambda url: with_param(url, "nonce", "attackers-nonce"))  # fmt: skip
    details = refused(await browser.get(callback), 401, "oidc_id_token_invalid")
    assert details["claim"] == "nonce"
    assert await query(db, "select count(*) from app_user where institution_id=:i and sso_subject=:s",
                       i=inst, s=subject) == [(0,)]  # fmt: skip


async def test_token_for_another_audience_is_refused(
    browser: httpx.AsyncClient, oidc_op: OidcSetup, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    """The provider (playing rogue) signs with its real key an id_token whose aud is someone else."""
    inst = oidc_op.rogue_institution
    oidc_op.op.add_account(subject, {"eduperson_principal_name": subject})
    callback = await browse.oidc_callback_url(browser, inst, subject)
    details = refused(await browser.get(callback), 401, "oidc_id_token_invalid")
    assert details["claim"] == "aud"
    assert await query(db, "select count(*) from app_user where institution_id=:i and sso_subject=:s",
                       i=inst, s=subject) == [(0,)]  # fmt: skip


async def test_callback_is_single_use_and_bound_to_the_browser(
    app: object, browser: httpx.AsyncClient, oidc_op: OidcSetup, subject: str
) -> None:
    inst = oidc_op.institution
    oidc_op.op.add_account(subject, {"eduperson_principal_name": subject})
    callback = await browse.oidc_callback_url(browser, inst, subject)
    async with browser_for(app) as victim:  # type: ignore[arg-type]
        refused(await victim.get(callback), 400, "sso_state_invalid")  # login CSRF
    # Presenting it anywhere uses the attempt up: state is single use, even for its own browser.
    refused(await browser.get(callback), 400, "sso_state_invalid")

    callback = await browse.oidc_callback_url(browser, inst, subject)
    assert (await browser.get(callback)).status_code == 303
    refused(await browser.get(callback), 400, "sso_state_invalid")


async def test_provider_error_and_missing_code_are_4xx(
    browser: httpx.AsyncClient, oidc_op: OidcSetup
) -> None:
    inst = oidc_op.institution
    start = await browser.get(f"{SP}/auth/oidc/{inst}/login")
    state = dict(parse_qsl(urlsplit(start.headers["location"]).query))["state"]
    resp = await browser.get(
        f"{SP}/auth/oidc/{inst}/callback", params={"state": state, "error": "access_denied"}
    )
    refused(resp, 401, "oidc_error")
    start = await browser.get(f"{SP}/auth/oidc/{inst}/login")
    state = dict(parse_qsl(urlsplit(start.headers["location"]).query))["state"]
    resp = await browser.get(f"{SP}/auth/oidc/{inst}/callback", params={"state": state, "code": "forged"})
    refused(resp, 401, "oidc_code_rejected")
