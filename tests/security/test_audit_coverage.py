"""Issue 17 item 13 (control plane): the audit log records sign-ins (SAML, OIDC, CAS, the development login),
export downloads, and refused admin requests (403), each under the person who did it.

Sign-ins go through the real identity providers of tests/sso (npm saml-idp, npm oidc-provider, PyPI
django-cas-server); the rest through the admin API with people signed in.
"""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.admin_api.conftest import Env, env, settings  # noqa: F401  (fixtures)
from tests.admin_api.helpers import audit_entries
from tests.sso import browse
from tests.sso.conftest import (  # noqa: F401  (fixtures: the SP app and real identity providers)
    CasSetup,
    OidcSetup,
    app,
    browser,
    cas_server,
    db,
    oidc_op,
    query,
    redis_client,
    registry,
    saml_idp,
    sso_workdir,
    subject,
)
from tests.sso.idps import SamlIdP


async def sign_ins(sessions: async_sessionmaker[AsyncSession], inst: str, who: str) -> list[tuple[str, str]]:
    rows = await query(sessions, "select actor, target from audit_entry where institution_id = :i and action = "
                       "'sso.login' and after->>'subject' = :s", i=inst, s=who)  # fmt: skip
    return [(str(a), str(t)) for a, t in rows]


async def test_saml_sign_in_is_audited(
    browser: httpx.AsyncClient,  # noqa: F811
    saml_idp: SamlIdP,  # noqa: F811
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    subject: str,  # noqa: F811
) -> None:
    acs, answer = await browse.saml_response(browser, saml_idp, name_id=f"opaque-{subject}",
                                             attributes={browse.EPPN: subject})  # fmt: skip
    assert (await browse.post_to_sp(browser, acs, answer)).status_code == 303
    assert await sign_ins(db, saml_idp.institution, subject) == [
        ("sso:saml", f"app_user:{saml_idp.institution}/{subject}")
    ]


async def test_oidc_sign_in_is_audited(
    browser: httpx.AsyncClient,  # noqa: F811
    oidc_op: OidcSetup,  # noqa: F811
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    subject: str,  # noqa: F811
) -> None:
    oidc_op.op.add_account(subject, {"email": f"m-{subject}", "email_verified": True,
                                     "eduperson_principal_name": subject})  # fmt: skip
    resp = await browser.get(await browse.oidc_callback_url(browser, oidc_op.institution, subject))
    assert resp.status_code == 303, resp.text
    assert await sign_ins(db, oidc_op.institution, subject) == [
        ("sso:oidc", f"app_user:{oidc_op.institution}/{subject}")
    ]


async def test_cas_sign_in_is_audited(
    browser: httpx.AsyncClient,  # noqa: F811
    cas_server: CasSetup,  # noqa: F811
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    subject: str,  # noqa: F811
) -> None:
    username = subject.split("@")[0]
    cas_server.server.add_user(username, "pw-1", {"eduPersonPrincipalName": subject})
    callback = await browse.cas_callback_url(
        browser, cas_server.server, cas_server.institution, username, "pw-1"
    )
    assert (await browser.get(callback)).status_code == 303
    assert await sign_ins(db, cas_server.institution, subject) == [
        ("sso:cas", f"app_user:{cas_server.institution}/{subject}")
    ]


async def test_dev_login_export_download_and_refusals_are_audited(env: Env) -> None:  # noqa: F811
    bursar = await env.login("fin")  # a development login
    [login] = [e for e in await audit_entries(env, "sso.login") if e.after and e.after["user_id"] == "fin"]
    assert login.actor == "sso:dev"

    export = await bursar.get("/api/v1/units/eng/export", params={"period": "2026-10", "format": "csv"})
    assert export.status_code == 200, export.text
    [download] = await audit_entries(env, "export.download")
    assert download.actor == "fin"
    assert download.after is not None
    assert (download.after["unit_id"], download.after["period"], download.after["format"]) == (
        "eng",
        "2026-10",
        "csv",
    )
    assert download.after["bytes"] == len(export.content)

    teacher = await env.login("inst1")
    refused = await teacher.patch("/api/v1/units/cs101", json={"name": "Mine now"})  # a writer: holds a lock
    assert refused.status_code == 403, refused.text
    script = await env.token_client("fin", ["usage:read"])
    scope_refused = await script.get("/api/v1/audit")
    assert scope_refused.status_code == 403, scope_refused.text
    denied = await audit_entries(env, "access.denied")
    assert [(e.actor, e.target) for e in denied] == [
        ("inst1", "request:PATCH /api/v1/units/cs101"),
        ("fin", "request:GET /api/v1/audit"),
    ]
    assert denied[0].after is not None and denied[0].after["unit_id"] == "cs101"
    assert denied[1].after is not None and denied[1].after["via"] == "pat" and denied[1].after["token_id"]

    # the refusals are where auditors look: cs's auditor sees the one on cs101
    auditor = await env.login("aud")
    listed = (await auditor.get("/api/v1/audit", params={"unit": "cs"})).json()["entries"]
    assert ("access.denied", "inst1") in {(e["action"], e["actor"]) for e in listed}
