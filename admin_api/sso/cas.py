"""CAS 3.0 client on python-cas: login URL, ticket validation at /p3/serviceValidate, logout URL.

python-cas builds the URLs and parses the CAS 3 response; the validation
request itself goes through our async httpx client (python-cas would block a
worker thread on `requests` with no timeout), under the upstream address policy
and the IdP limits (idp_http.py). The CAS server enforces that a
service ticket is valid once, for the exact service URL it was issued to, for
a short time; the callback additionally refuses a ticket it has already seen
before asking the server at all.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import httpx
from cas import CASClient, CASClientV3
from lxml import etree

from admin_api.sso.config import CasServer
from admin_api.sso.errors import SSOError
from admin_api.sso.idp_http import IdpLimits, exchange

CAS_NS = "http://www.yale.edu/tp/cas"


def _client(cfg: CasServer, service_url: str) -> CASClientV3:
    client = CASClient(version=3, service_url=service_url, server_url=cfg.server_url)
    assert isinstance(client, CASClientV3)
    return client


def login_url(cfg: CasServer, service_url: str) -> str:
    return str(_client(cfg, service_url).get_login_url())


def logout_url(cfg: CasServer, return_url: str | None) -> str:
    return str(_client(cfg, return_url or "").get_logout_url(return_url))


def _failure(xml: bytes) -> dict[str, Any]:
    """The server's reason (INVALID_TICKET, INVALID_SERVICE, ...) for the error details."""
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        root = etree.fromstring(xml, parser)
        node = root.find(f"{{{CAS_NS}}}authenticationFailure")
        if node is not None:
            return {"cas_code": node.get("code"), "cas_message": (node.text or "").strip()}
    except etree.XMLSyntaxError:
        pass
    return {}


async def validate(
    http: httpx.AsyncClient, limits: IdpLimits, cfg: CasServer, service_url: str, ticket: str
) -> tuple[str, dict[str, Any]]:
    """(user, attributes) for a service ticket, or `SSOError` 401 when the server refuses it. The answer is
    capped and timed by `limits` (idp_http.py): the server is whatever URL the institution wrote."""
    url = urljoin(cfg.server_url, CASClientV3.url_suffix)
    try:
        resp = await exchange(http, limits, "GET", url, params={"ticket": ticket, "service": service_url})
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise SSOError(502, "idp_unreachable", "the CAS server could not be reached",
                       {"reason": str(exc)}) from None  # fmt: skip
    try:
        user, attributes, _ = CASClientV3.verify_response(resp.content)
    except Exception as exc:  # ElementTree parse errors on a non-CAS answer
        raise SSOError(502, "idp_misconfigured", "the CAS server's answer is not a CAS response",
                       {"reason": str(exc)}) from None  # fmt: skip
    if not user:
        raise SSOError(401, "cas_ticket_invalid", "the CAS server refused the ticket", _failure(resp.content))
    return str(user), dict(attributes or {})
