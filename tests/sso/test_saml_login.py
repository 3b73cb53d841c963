"""SAML 2.0 against a real signing IdP (npm saml-idp): metadata, login with attribute mapping, single logout."""

from __future__ import annotations

import httpx
from lxml import etree
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.sso import browse
from tests.sso.conftest import browser_for, query
from tests.sso.idps import SamlIdP
from tests.sso.support import SP, form_of

MD = "urn:oasis:names:tc:SAML:2.0:metadata"


async def test_metadata_names_our_endpoints(browser: httpx.AsyncClient, saml_idp: SamlIdP) -> None:
    inst = saml_idp.institution
    resp = await browser.get(f"{SP}/auth/saml/{inst}/metadata")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/samlmetadata+xml")
    root = etree.fromstring(resp.content)
    assert root.get("entityID") == f"{SP}/auth/saml/{inst}/metadata"
    acs = root.find(f".//{{{MD}}}AssertionConsumerService")
    assert acs is not None and acs.get("Location") == f"{SP}/auth/saml/{inst}/acs"
    assert acs.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    slo = root.find(f".//{{{MD}}}SingleLogoutService")
    assert slo is not None and slo.get("Location") == f"{SP}/auth/saml/{inst}/slo"
    sp = root.find(f"{{{MD}}}SPSSODescriptor")
    assert sp is not None and sp.get("WantAssertionsSigned") == "true"


async def test_unknown_institution_is_a_404_in_the_error_shape(browser: httpx.AsyncClient) -> None:
    resp = await browser.get(f"{SP}/auth/saml/no-such-place/login")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "sso_not_configured"
    assert set(resp.json()["error"]) == {"code", "message", "details"}


async def test_login_maps_eduperson_attributes_to_user_roles_and_units(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    inst = saml_idp.institution
    acs, answer = await browse.saml_response(
        browser, saml_idp, name_id=f"opaque-{subject}",
        attributes={
            browse.EPPN: subject,
            browse.MAIL: f"mail-{subject}",
            browse.DISPLAY_NAME: "Sam Student",
            browse.AFFILIATION: ["student", "member"],
            browse.SCOPED_AFFILIATION: ["student@people.test"],
            browse.ENTITLEMENT: [f"urn:mace:{inst}:course:cs101:student",
                                 "urn:mace:other-university:course:cs102:instructor",  # not ours
                                 f"urn:mace:{inst}:course:cs101:janitor"],  # unknown role
            browse.IS_MEMBER_OF: ["course:cs102:ta", "unit:math:finance", "course:no-such-unit:student"],
        },
    )  # fmt: skip
    resp = await browse.post_to_sp(browser, acs, answer)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/after-login"

    users = await query(db, "select id, email, name from app_user where institution_id=:i and sso_subject=:s",
                        i=inst, s=subject)  # fmt: skip
    assert users == [(subject, f"mail-{subject}", "Sam Student")]
    members = await query(db, "select unit_id, role, source from membership where institution_id=:i and "
                          "user_id=:u order by unit_id", i=inst, u=subject)  # fmt: skip
    assert members == [("cs101", "student", "sso"), ("cs102", "ta", "sso")]
    scopes = await query(db, "select unit_id, role, source from admin_scope where institution_id=:i and "
                         "user_id=:u", i=inst, u=subject)  # fmt: skip
    assert scopes == []  # the group unit:math:finance: admin roles from the IdP are off by default
    audit = await query(db, "select actor, action from audit_entry where institution_id=:i and target like :t "
                        "order by id", i=inst, t=f"%{subject}%")  # fmt: skip
    assert ("sso:saml", "sso.user.create") in audit
    assert sum(1 for _, action in audit if action == "sso.membership.create") == 2

    who = await browser.get(f"{SP}/auth/session")
    assert who.status_code == 200
    body = who.json()
    assert body["principal"]["user_id"] == subject
    assert body["principal"]["method"] == "saml"
    assert set(body["principal"]["affiliations"]) == {"student", "member", "student@people.test"}
    assert [m["unit_id"] for m in body["memberships"]] == ["cs101", "cs102"]
    assert body["csrf_token"] == browser.cookies.get("eduaiq_csrf")


async def test_file_grants_survive_and_sso_grants_follow_the_idp(
    browser: httpx.AsyncClient, app: object, saml_idp: SamlIdP, db: async_sessionmaker[AsyncSession]
) -> None:
    """prof-file is an instructor of cs101 and admin of math by the institution file."""
    inst = saml_idp.institution
    person = f"prof@{inst}.edu"

    async def login(entitlements: list[str]) -> None:
        acs, answer = await browse.saml_response(
            browser, saml_idp, name_id=person,
            attributes={browse.EPPN: person, browse.ENTITLEMENT: entitlements},
        )  # fmt: skip
        resp = await browse.post_to_sp(browser, acs, answer)
        assert resp.status_code == 303, resp.text

    await login([f"urn:mace:{inst}:course:cs101:student", f"urn:mace:{inst}:course:cs102:student"])
    members = await query(db, "select unit_id, role, source from membership where institution_id=:i and "
                          "user_id='prof-file' order by unit_id", i=inst)  # fmt: skip
    assert members == [("cs101", "instructor", "file"), ("cs102", "student", "sso")]
    assert await query(db, "select count(*) from app_user where institution_id=:i and sso_subject=:s",
                       i=inst, s=person) == [(1,)]  # fmt: skip

    await login([])  # the IdP no longer asserts cs102: the SSO grant goes, the file's grants stay
    members = await query(db, "select unit_id, role, source from membership where institution_id=:i and "
                          "user_id='prof-file' order by unit_id", i=inst)  # fmt: skip
    assert members == [("cs101", "instructor", "file")]
    scopes = await query(db, "select unit_id, role, source from admin_scope where institution_id=:i and "
                         "user_id='prof-file'", i=inst)  # fmt: skip
    assert scopes == [("math", "admin", "file")]


async def test_sp_initiated_single_logout(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, redis_client: Redis, subject: str
) -> None:
    acs, answer = await browse.saml_response(browser, saml_idp, name_id=subject,
                                             attributes={browse.EPPN: subject})  # fmt: skip
    assert (await browse.post_to_sp(browser, acs, answer)).status_code == 303
    assert (await browser.get(f"{SP}/auth/session")).status_code == 200

    out = await browser.post(f"{SP}/auth/logout", headers={"X-CSRF-Token": browser.cookies["eduaiq_csrf"]})
    assert out.status_code == 200, out.text
    redirect = out.json()["redirect"]
    assert redirect.startswith(f"{saml_idp.url}/saml/slo?SAMLRequest=")
    assert (await browser.get(f"{SP}/auth/session")).status_code == 401  # ended here at once

    idp_page = await browser.get(redirect)  # the IdP ends its session and answers with a LogoutResponse
    assert idp_page.status_code == 200, idp_page.text
    action, fields = form_of(idp_page.text, str(idp_page.url))
    assert action == f"{SP}/auth/saml/{saml_idp.institution}/slo" and "SAMLResponse" in fields
    done = await browse.post_to_sp(browser, action, fields)
    assert done.status_code == 303, done.text

    again = await browse.post_to_sp(browser, action, fields)  # the same LogoutResponse cannot be replayed
    assert again.status_code == 400 and again.json()["error"]["code"] == "sso_state_invalid"


async def test_idp_initiated_single_logout_ends_only_that_persons_sessions(
    app: object, browser: httpx.AsyncClient, saml_idp: SamlIdP, subject: str
) -> None:
    async with browser_for(app) as other:  # type: ignore[arg-type]
        # saml-idp keeps one global "current user", so the person who signs out signs in last.
        someone = "other-" + subject
        acs2, answer2 = await browse.saml_response(other, saml_idp, name_id=someone,
                                                   attributes={browse.EPPN: someone})  # fmt: skip
        assert (await browse.post_to_sp(other, acs2, answer2)).status_code == 303
        acs, answer = await browse.saml_response(browser, saml_idp, name_id=subject,
                                                 attributes={browse.EPPN: subject})  # fmt: skip
        assert (await browse.post_to_sp(browser, acs, answer)).status_code == 303

        signout = await browser.get(f"{saml_idp.url}/signout")  # the person signs out at the IdP
        assert signout.status_code == 302
        page = await browser.get(str(signout.url.join(signout.headers["location"])))
        action, fields = form_of(page.text, str(page.url))
        assert action == f"{SP}/auth/saml/{saml_idp.institution}/slo" and "SAMLRequest" in fields
        reply = await browse.post_to_sp(browser, action, fields)
        assert reply.status_code == 200, reply.text
        back, response_fields = form_of(reply.text, SP)
        assert back == f"{saml_idp.url}/saml/slo" and "SAMLResponse" in response_fields
        assert (await browser.post(back, data=response_fields)).status_code == 200  # the IdP accepts it

        assert (await browser.get(f"{SP}/auth/session")).status_code == 401
        assert (await other.get(f"{SP}/auth/session")).status_code == 200
