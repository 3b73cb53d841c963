"""Forged and replayed SAML responses are refused with a 4xx in the error shape, and change nothing.

Each attack starts from a genuine response of the real IdP to a genuine login
attempt, so the one thing altered is the thing under test. The expired and
wrong-audience cases are re-signed with the IdP's own key: only the SP's time
and audience checks stand between them and a session. A control case re-signs
an unaltered assertion the same way and is accepted, which shows the re-signing
itself is sound.
"""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.certs import key_pair
from tests.sso import browse
from tests.sso.conftest import browser_for, query
from tests.sso.idps import SamlIdP
from tests.sso.support import (
    NS,
    SP,
    assertion_of,
    decode_response,
    encode_response,
    resign_assertion,
    saml_time,
    set_attribute,
    strip_signatures,
)


def refused(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    assert "eduaiq_session" not in resp.cookies


async def genuine(browser: httpx.AsyncClient, idp: SamlIdP, subject: str) -> tuple[str, dict[str, str]]:
    return await browse.saml_response(
        browser, idp, name_id=subject,
        attributes={browse.EPPN: subject, browse.ENTITLEMENT: [f"urn:mace:{idp.institution}:course:cs101:student"]},
    )  # fmt: skip


async def no_user(db: async_sessionmaker[AsyncSession], idp: SamlIdP, subject: str) -> bool:
    rows = await query(db, "select count(*) from app_user where institution_id=:i and sso_subject=:s",
                       i=idp.institution, s=subject)  # fmt: skip
    return rows == [(0,)]


async def test_unsigned_response_is_refused(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    root = strip_signatures(decode_response(answer["SAMLResponse"]))
    resp = await browse.post_to_sp(browser, acs, {**answer, "SAMLResponse": encode_response(root)})
    refused(resp, 401, "saml_signature_invalid")
    assert await no_user(db, saml_idp, subject)


async def test_response_resigned_with_a_foreign_key_is_refused(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    root = decode_response(answer["SAMLResponse"])
    set_attribute(root, browse.EPPN, ["admin-" + subject])
    set_attribute(root, browse.ENTITLEMENT, [f"urn:mace:{saml_idp.institution}:unit:cs:admin"])
    attacker_key, attacker_cert = key_pair("Not the IdP")
    resign_assertion(root, attacker_key, attacker_cert)  # carries its own certificate in KeyInfo
    resp = await browse.post_to_sp(browser, acs, {**answer, "SAMLResponse": encode_response(root)})
    refused(resp, 401, "saml_signature_invalid")
    assert await no_user(db, saml_idp, "admin-" + subject)


async def test_control_resigned_with_the_idp_key_is_accepted(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    root = resign_assertion(decode_response(answer["SAMLResponse"]), saml_idp.key_pem, saml_idp.cert_pem)
    resp = await browse.post_to_sp(browser, acs, {**answer, "SAMLResponse": encode_response(root)})
    assert resp.status_code == 303, resp.text


async def test_replayed_response_is_refused(
    app: object, browser: httpx.AsyncClient, saml_idp: SamlIdP, subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    assert (await browse.post_to_sp(browser, acs, answer)).status_code == 303
    refused(await browse.post_to_sp(browser, acs, answer), 401, "saml_replayed")
    async with browser_for(app) as thief:  # type: ignore[arg-type]
        refused(await browse.post_to_sp(thief, acs, answer), 401, "saml_replayed")


async def test_expired_assertion_is_refused(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    root = decode_response(answer["SAMLResponse"])
    assertion = assertion_of(root)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    for cond in assertion.iterfind("saml:Conditions", NS):
        cond.set("NotBefore", saml_time(past - dt.timedelta(minutes=5)))
        cond.set("NotOnOrAfter", saml_time(past))
    for scd in assertion.iterfind("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS):
        scd.set("NotOnOrAfter", saml_time(past))
    resign_assertion(root, saml_idp.key_pem, saml_idp.cert_pem)
    resp = await browse.post_to_sp(browser, acs, {**answer, "SAMLResponse": encode_response(root)})
    refused(resp, 401, "saml_expired")
    assert await no_user(db, saml_idp, subject)


async def test_assertion_for_another_audience_is_refused(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, db: async_sessionmaker[AsyncSession], subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    root = decode_response(answer["SAMLResponse"])
    audiences = assertion_of(root).findall("saml:Conditions/saml:AudienceRestriction/saml:Audience", NS)
    assert audiences
    for audience in audiences:
        audience.text = "https://another-service.example/saml/metadata"
    resign_assertion(root, saml_idp.key_pem, saml_idp.cert_pem)
    resp = await browse.post_to_sp(browser, acs, {**answer, "SAMLResponse": encode_response(root)})
    refused(resp, 401, "saml_audience_mismatch")
    assert await no_user(db, saml_idp, subject)


async def test_response_for_another_destination_is_refused(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    root = decode_response(answer["SAMLResponse"])
    root.set("Destination", "https://another-service.example/acs")  # on the envelope: drop its signature
    for sig in root.findall("ds:Signature", NS):
        root.remove(sig)
    resp = await browse.post_to_sp(browser, acs, {**answer, "SAMLResponse": encode_response(root)})
    refused(resp, 401, "saml_destination_mismatch")


async def test_unsolicited_or_foreign_relay_state_is_refused(
    browser: httpx.AsyncClient, saml_idp: SamlIdP, subject: str
) -> None:
    acs, answer = await genuine(browser, saml_idp, subject)
    refused(
        await browse.post_to_sp(browser, acs, {**answer, "RelayState": "made-up"}), 400, "sso_state_invalid"
    )
    refused(await browse.post_to_sp(browser, acs, {"SAMLResponse": answer["SAMLResponse"]}), 400,
            "sso_state_invalid")  # fmt: skip


async def test_response_finished_in_another_browser_is_refused(
    app: object, browser: httpx.AsyncClient, saml_idp: SamlIdP, subject: str
) -> None:
    """Login CSRF: an attacker's own valid response, pushed into a victim's browser, must not sign them in."""
    acs, answer = await genuine(browser, saml_idp, subject)
    async with browser_for(app) as victim:  # type: ignore[arg-type]
        refused(await browse.post_to_sp(victim, acs, answer), 400, "sso_state_invalid")


async def test_garbage_is_a_400_not_a_500(browser: httpx.AsyncClient, saml_idp: SamlIdP) -> None:
    acs = f"{SP}/auth/saml/{saml_idp.institution}/acs"
    for junk in ("not base64 at all!", "PGZvbz4=", "PHNhbWxwOlJlc3BvbnNlIHhtbG5zOnNhbWxwPSJ4Ii8+"):
        resp = await browse.post_to_sp(browser, acs, {"SAMLResponse": junk, "RelayState": "x"})
        assert 400 <= resp.status_code < 500, resp.text
        assert set(resp.json()["error"]) == {"code", "message", "details"}
