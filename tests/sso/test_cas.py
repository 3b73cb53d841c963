"""CAS 3.0 against a real CAS server (django-cas-server): login with attributes, tickets good once."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.sso import browse
from tests.sso.conftest import CasSetup, query
from tests.sso.support import SP


def refused(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    assert "eduaiq_session" not in resp.cookies
    return dict(error["details"])


async def test_login_maps_cas_attributes(
    browser: httpx.AsyncClient, cas_server: CasSetup, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    inst = cas_server.institution
    username = subject.split("@")[0]
    cas_server.server.add_user(username, "pw-1", {
        "eduPersonPrincipalName": subject, "mail": f"mail-{subject}", "displayName": "Casey Cas",
        "eduPersonEntitlement": [f"urn:mace:{inst}:course:cs101:student", f"urn:mace:{inst}:unit:math:admin"],
        "isMemberOf": ["course:cs102:researcher"],
    })  # fmt: skip
    callback = await browse.cas_callback_url(browser, cas_server.server, inst, username, "pw-1")
    resp = await browser.get(callback)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/after-login"

    users = await query(db, "select id, email, name from app_user where institution_id=:i and sso_subject=:s",
                        i=inst, s=subject)  # fmt: skip
    assert users == [(subject, f"mail-{subject}", "Casey Cas")]
    members = await query(db, "select unit_id, role, source from membership where institution_id=:i and "
                          "user_id=:u order by unit_id", i=inst, u=subject)  # fmt: skip
    assert members == [("cs101", "student", "sso"), ("cs102", "researcher", "sso")]
    scopes = await query(db, "select unit_id, role from admin_scope where institution_id=:i and user_id=:u",
                         i=inst, u=subject)  # fmt: skip
    assert scopes == []  # admin roles from the IdP are off by default (issue 17 item 6)
    who = (await browser.get(f"{SP}/auth/session")).json()
    assert who["principal"]["method"] == "cas"

    out = await browser.post(f"{SP}/auth/logout", headers={"X-CSRF-Token": browser.cookies["eduaiq_csrf"]})
    assert out.json()["redirect"].startswith(f"{cas_server.server.url}logout?service=")


async def test_reused_ticket_is_refused(
    browser: httpx.AsyncClient, cas_server: CasSetup, subject: str
) -> None:
    inst = cas_server.institution
    username = subject.split("@")[0]
    cas_server.server.add_user(username, "pw-2", {"eduPersonPrincipalName": subject})
    callback = await browse.cas_callback_url(browser, cas_server.server, inst, username, "pw-2")
    assert (await browser.get(callback)).status_code == 303
    refused(await browser.get(callback), 401, "cas_ticket_reused")


async def test_ticket_issued_for_another_service_is_refused_by_the_server(
    browser: httpx.AsyncClient, cas_server: CasSetup, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    """A ticket stolen from one sign-in attempt, presented with another: the CAS server itself says no."""
    inst = cas_server.institution
    username = subject.split("@")[0]
    cas_server.server.add_user(username, "pw-3", {"eduPersonPrincipalName": subject})
    stolen = httpx.URL(await browse.cas_callback_url(browser, cas_server.server, inst, username, "pw-3"))
    start = await browser.get(f"{SP}/auth/cas/{inst}/login")
    service = httpx.URL(httpx.URL(start.headers["location"]).params["service"])
    forged = service.copy_merge_params({"ticket": stolen.params["ticket"]})
    details = refused(await browser.get(str(forged)), 401, "cas_ticket_invalid")
    assert details["cas_code"] in ("INVALID_SERVICE", "INVALID_TICKET")
    assert await query(db, "select count(*) from app_user where institution_id=:i and sso_subject=:s",
                       i=inst, s=subject) == [(0,)]  # fmt: skip
