"""Scripted browser journeys through each IdP, up to the answer the IdP sends back to the SP."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.sso.idps import CasServer, SamlIdP
from tests.sso.support import SP, form_of

EPPN = "urn:oid:1.3.6.1.4.1.5923.1.1.1.6"
MAIL = "urn:oid:0.9.2342.19200300.100.1.3"
DISPLAY_NAME = "urn:oid:2.16.840.1.113730.3.1.241"
AFFILIATION = "urn:oid:1.3.6.1.4.1.5923.1.1.1.1"
SCOPED_AFFILIATION = "urn:oid:1.3.6.1.4.1.5923.1.1.1.9"
ENTITLEMENT = "urn:oid:1.3.6.1.4.1.5923.1.1.1.7"
IS_MEMBER_OF = "urn:oid:1.3.6.1.4.1.5923.1.5.1.1"
MULTI = (AFFILIATION, SCOPED_AFFILIATION, ENTITLEMENT, IS_MEMBER_OF)


async def saml_response(
    browser: httpx.AsyncClient,
    idp: SamlIdP,
    *,
    name_id: str,
    attributes: dict[str, str | list[str]],
    return_to: str = "/after-login",
) -> tuple[str, dict[str, str]]:
    """SP login -> IdP sign-in form -> the IdP's auto-post page: (ACS URL, {SAMLResponse, RelayState})."""
    start = await browser.get(f"{SP}/auth/saml/{idp.institution}/login", params={"return_to": return_to})
    assert start.status_code == 302, start.text
    assert start.headers["location"].startswith(f"{idp.url}/saml/sso?SAMLRequest=")
    page = await browser.get(start.headers["location"])
    assert page.status_code == 200, page.text
    action, fields = form_of(page.text, str(page.url), "/signin")
    fields["userName"] = name_id
    fields["nameIdFormat"] = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    for name in (EPPN, MAIL, DISPLAY_NAME, *MULTI):
        value = attributes.get(name, "")
        fields[name] = ",".join(value) if isinstance(value, list) else value
    posted = await browser.post(action, data=fields)
    assert posted.status_code == 200, posted.text
    acs, answer = form_of(posted.text, str(posted.url))
    assert set(answer) >= {"SAMLResponse", "RelayState"}
    return acs, answer


async def post_to_sp(browser: httpx.AsyncClient, url: str, fields: dict[str, str]) -> httpx.Response:
    assert url.startswith(SP), url
    return await browser.post(url, data=fields)


async def oidc_callback_url(
    browser: httpx.AsyncClient,
    institution: str,
    account: str,
    tamper: Callable[[str], str] | None = None,
) -> str:
    """SP login -> provider login and consent (dev interactions) -> the redirect back to the SP."""
    start = await browser.get(f"{SP}/auth/oidc/{institution}/login", params={"return_to": "/after-login"})
    assert start.status_code == 302, start.text
    url = start.headers["location"]
    if tamper is not None:
        url = tamper(url)
    for _ in range(20):
        resp = await browser.get(url)
        while resp.status_code in (302, 303):
            url = str(resp.url.join(resp.headers["location"]))
            if url.startswith(SP):
                return url
            resp = await browser.get(url)
        assert resp.status_code == 200, resp.text
        action, fields = form_of(resp.text, str(resp.url))
        if fields.get("prompt") == "login":
            fields.update(login=account, password="any")
        resp = await browser.post(action, data=fields)
        assert resp.status_code in (302, 303), resp.text
        url = str(resp.url.join(resp.headers["location"]))
        if url.startswith(SP):
            return url
    raise AssertionError("the provider never redirected back")


async def cas_callback_url(
    browser: httpx.AsyncClient, cas: CasServer, institution: str, username: str, password: str
) -> str:
    """SP login -> CAS login form -> the redirect back to the SP with a service ticket."""
    start = await browser.get(f"{SP}/auth/cas/{institution}/login", params={"return_to": "/after-login"})
    assert start.status_code == 302, start.text
    page = await browser.get(start.headers["location"])
    assert page.status_code == 200, page.text
    action, fields = form_of(page.text, str(page.url))
    fields.update(username=username, password=password)
    done = await browser.post(action, data=fields)
    assert done.status_code == 302, done.text
    location = done.headers["location"]
    assert location.startswith(f"{SP}/auth/cas/{institution}/callback?"), location
    assert "ticket=ST-" in location
    return location
