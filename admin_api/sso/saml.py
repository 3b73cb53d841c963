"""SAML 2.0 service provider, on python3-saml (OneLogin), strict mode only.

What is checked on every Response (python3-saml strict mode, configured here):
the assertion is signed by the IdP's certificate (the envelope too when the
institution asks), Destination is our ACS URL, Audience is our entity id,
Issuer is the IdP, Conditions and SubjectConfirmation are within their
validity window, InResponseTo is the AuthnRequest we sent for this flow
(unsolicited responses are refused), and deprecated algorithms (SHA-1) are
refused. Replay is refused by the caller through the replay cache.

URLs come from the configured public base URL, never from request headers, so
the Destination and Recipient checks cannot be steered by a spoofed Host.
python3-saml is synchronous but CPU-only (no I/O), so it runs inline.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.logout_response import OneLogin_Saml2_Logout_Response
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from admin_api.sso import sso_secrets
from admin_api.sso.config import InstitutionSSO, SamlIdP
from admin_api.sso.errors import SSOError
from core.declared import SecretVar

V = OneLogin_Saml2_ValidationError
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
NS = {"samlp": C.NS_SAMLP, "saml": C.NS_SAML, "ds": C.NS_DS}

_SIGNATURE = {
    V.NO_SIGNED_ASSERTION, V.NO_SIGNATURE_FOUND, V.INVALID_SIGNATURE, V.NO_SIGNED_MESSAGE,
    V.WRONG_SIGNED_ELEMENT, V.ID_NOT_FOUND_IN_SIGNED_ELEMENT, V.DUPLICATED_ID_IN_SIGNED_ELEMENTS,
    V.INVALID_SIGNED_ELEMENT, V.DUPLICATED_REFERENCE_IN_SIGNED_ELEMENTS, V.UNEXPECTED_SIGNED_ELEMENTS,
    V.WRONG_NUMBER_OF_SIGNATURES_IN_RESPONSE, V.WRONG_NUMBER_OF_SIGNATURES_IN_ASSERTION,
    V.WRONG_NUMBER_OF_SIGNATURES, V.DEPRECATED_SIGNATURE_METHOD, V.DEPRECATED_DIGEST_METHOD,
}  # fmt: skip
_CODES: dict[int, tuple[str, str]] = {
    **{c: ("saml_signature_invalid", "the assertion is not signed by the institution's identity provider")
       for c in _SIGNATURE},
    V.ASSERTION_EXPIRED: ("saml_expired", "the assertion has expired"),
    V.RESPONSE_EXPIRED: ("saml_expired", "the message has expired"),
    V.SESSION_EXPIRED: ("saml_expired", "the identity provider session has expired"),
    V.ASSERTION_TOO_EARLY: ("saml_expired", "the assertion is not valid yet"),
    V.WRONG_AUDIENCE: ("saml_audience_mismatch", "the assertion is meant for another service"),
    V.WRONG_DESTINATION: ("saml_destination_mismatch", "the response was sent to another endpoint"),
    V.EMPTY_DESTINATION: ("saml_destination_mismatch", "the response has an empty Destination"),
    V.WRONG_ISSUER: ("saml_issuer_mismatch", "the response comes from another identity provider"),
    V.ISSUER_MULTIPLE_IN_RESPONSE: ("saml_issuer_mismatch", "the response names several issuers"),
    V.ISSUER_NOT_FOUND_IN_ASSERTION: ("saml_issuer_mismatch", "the assertion names no issuer"),
    V.WRONG_INRESPONSETO: ("saml_in_response_to_mismatch", "the response answers another request"),
    V.STATUS_CODE_IS_NOT_SUCCESS: ("saml_idp_refused", "the identity provider did not sign you in"),
    V.WRONG_SUBJECTCONFIRMATION: ("saml_subject_unconfirmed", "no valid bearer subject confirmation"),
}  # fmt: skip
_MALFORMED = {V.INVALID_XML_FORMAT, V.MISSING_ID, V.UNSUPPORTED_SAML_VERSION, V.WRONG_NUMBER_OF_ASSERTIONS,
              V.MISSING_STATUS, V.MISSING_STATUS_CODE, V.MISSING_CONDITIONS, V.NO_NAMEID, V.EMPTY_NAMEID,
              V.WRONG_NUMBER_OF_AUTHSTATEMENTS, V.DUPLICATED_ATTRIBUTE_NAME_FOUND}  # fmt: skip


def refusal(exc: Exception) -> SSOError:
    """A python3-saml failure as a 4xx with a stable code; the library's sentence goes in details."""
    code = getattr(exc, "code", None)
    if isinstance(exc, V) and code in _CODES:
        name, message = _CODES[code]
        return SSOError(401, name, message, {"reason": str(exc)})
    if isinstance(exc, V) and code in _MALFORMED:
        return SSOError(400, "saml_response_invalid", "the SAML message is malformed", {"reason": str(exc)})
    return SSOError(401, "saml_rejected", "the SAML message was refused", {"reason": str(exc)})


@dataclass(frozen=True)
class SpUrls:
    entity_id: str
    metadata: str
    acs: str
    slo: str


def _pem_body(cert: str) -> str:
    return OneLogin_Saml2_Utils.format_cert(cert, heads=False)


def settings_for(cfg: InstitutionSSO, urls: SpUrls, declared: Sequence[SecretVar]) -> OneLogin_Saml2_Settings:
    """`declared`: the operator's EDUAIQ_SSO_SECRET_VARS, which the SP key's variable must be in."""
    idp = cfg.saml
    if idp is None:
        raise ValueError("institution has no SAML IdP")
    name = idp.sp_private_key_env
    key = sso_secrets.read(declared, cfg.institution_id, name, sso_secrets.saml_hosts(cfg)) if name else None
    signing = bool(idp.sp_cert and key)
    idp_data: dict[str, Any] = {
        "entityId": idp.entity_id,
        "singleSignOnService": {"url": idp.sso_url, "binding": C.BINDING_HTTP_REDIRECT},
        "x509cert": _pem_body(idp.x509_cert),
    }
    if idp.slo_url:
        idp_data["singleLogoutService"] = {"url": idp.slo_url, "binding": C.BINDING_HTTP_REDIRECT}
    if idp.x509_cert_next:
        idp_data["x509certMulti"] = {"signing": [_pem_body(idp.x509_cert), _pem_body(idp.x509_cert_next)]}
    data = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": urls.entity_id,
            "assertionConsumerService": {"url": urls.acs, "binding": C.BINDING_HTTP_POST},
            "singleLogoutService": {"url": urls.slo, "binding": C.BINDING_HTTP_REDIRECT},
            "NameIDFormat": idp.name_id_format,
            "x509cert": _pem_body(idp.sp_cert) if signing and idp.sp_cert else "",
            "privateKey": key if signing and key else "",
        },
        "idp": idp_data,
        "security": {
            "authnRequestsSigned": signing,
            "logoutRequestSigned": signing,
            "logoutResponseSigned": signing,
            "signMetadata": False,
            "wantAssertionsSigned": True,
            "wantMessagesSigned": idp.want_response_signed,
            "wantNameId": True,
            "wantAttributeStatement": False,
            "requestedAuthnContext": False,
            "rejectDeprecatedAlgorithm": True,
            "rejectUnsolicitedResponsesWithInResponseTo": True,
            "allowRepeatAttributeName": True,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
        },
    }
    return OneLogin_Saml2_Settings(data, sp_validation_only=False)


def metadata_xml(settings: OneLogin_Saml2_Settings) -> str:
    xml = settings.get_sp_metadata()
    errors = settings.validate_metadata(xml)
    if errors:
        raise SSOError(400, "saml_metadata_invalid", "the SP metadata does not validate", {"errors": errors})
    return xml.decode() if isinstance(xml, bytes) else str(xml)


def request_data(
    url: str, get: dict[str, str] | None = None, post: dict[str, str] | None = None
) -> dict[str, Any]:
    """python3-saml's view of a request, built from our public URL so checks compare against it."""
    parts = urlsplit(url)
    return {
        "https": "on" if parts.scheme == "https" else "off",
        "http_host": parts.netloc,
        "script_name": parts.path,
        "get_data": dict(get or {}),
        "post_data": dict(post or {}),
    }


def login_redirect(settings: OneLogin_Saml2_Settings, urls: SpUrls, relay_state: str) -> tuple[str, str]:
    """The IdP URL carrying our AuthnRequest (HTTP-Redirect) and the request's id, kept for InResponseTo."""
    auth = OneLogin_Saml2_Auth(request_data(urls.acs), old_settings=settings)
    url = auth.login(return_to=relay_state)
    return url, auth.get_last_request_id()


@dataclass(frozen=True)
class ResponseIds:
    response_id: str | None
    assertion_ids: tuple[str, ...]


def _decode_xml(b64: str) -> etree._Element:
    try:
        raw = base64.b64decode(b64, validate=False)
        return OneLogin_Saml2_XML.to_etree(raw)
    except Exception as exc:  # any decoding or parsing failure is the sender's
        raise SSOError(400, "saml_response_invalid", "SAMLResponse is not base64-encoded SAML XML",
                       {"reason": str(exc)}) from None  # fmt: skip


def peek_ids(saml_response: str) -> ResponseIds:
    """The (unverified) ids of a Response, only to refuse one already seen before spending effort on it."""
    root = _decode_xml(saml_response)
    ids = tuple(a.get("ID") for a in root.findall(f"{{{C.NS_SAML}}}Assertion") if a.get("ID"))
    return ResponseIds(response_id=root.get("ID"), assertion_ids=tuple(i for i in ids if i))


@dataclass(frozen=True)
class Assertion:
    name_id: str
    name_id_format: str | None
    name_id_nq: str | None
    name_id_spnq: str | None
    session_index: str | None
    attributes: dict[str, list[str]]
    response_id: str
    assertion_id: str
    not_on_or_after: (
        datetime | None
    )  # of the subject confirmation: how long the replay cache must remember it
    session_not_on_or_after: datetime | None = field(default=None)


def _when(ts: int | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None


def accept_response(
    settings: OneLogin_Saml2_Settings, urls: SpUrls, saml_response: str, request_id: str
) -> Assertion:
    """Validate a posted Response against the AuthnRequest `request_id`; raise `SSOError` if refused."""
    try:
        response = OneLogin_Saml2_Response(settings, saml_response)
        response.is_valid(request_data(urls.acs, post={"SAMLResponse": saml_response}), request_id,
                          raise_exceptions=True)  # fmt: skip
        in_response_to = response.get_in_response_to()
        if in_response_to != request_id:  # python3-saml lets a response without InResponseTo through
            raise V("the response does not answer our request", V.WRONG_INRESPONSETO)
        attributes: dict[str, list[str]] = {}
        for source in (response.get_attributes(), response.get_friendlyname_attributes()):
            for key, values in source.items():
                attributes.setdefault(key, []).extend(v for v in values if isinstance(v, str))
        return Assertion(
            name_id=response.get_nameid(),
            name_id_format=response.get_nameid_format(),
            name_id_nq=response.get_nameid_nq(),
            name_id_spnq=response.get_nameid_spnq(),
            session_index=response.get_session_index(),
            attributes=attributes,
            response_id=response.get_id(),
            assertion_id=response.get_assertion_id(),
            not_on_or_after=_when(response.get_assertion_not_on_or_after()),
            session_not_on_or_after=_when(response.get_session_not_on_or_after()),
        )
    except SSOError:
        raise
    except (V, OneLogin_Saml2_Error) as exc:
        raise refusal(exc) from None
    except Exception as exc:  # lxml / xmlsec errors on hostile input
        raise SSOError(400, "saml_response_invalid", "the SAML response could not be processed",
                       {"reason": str(exc)}) from None  # fmt: skip


def logout_redirect(
    settings: OneLogin_Saml2_Settings, urls: SpUrls, logout: dict[str, str], relay_state: str
) -> tuple[str, str]:
    """SP-initiated single logout: the IdP URL carrying our LogoutRequest, and that request's id."""
    auth = OneLogin_Saml2_Auth(request_data(urls.slo), old_settings=settings)
    url = auth.logout(
        return_to=relay_state,
        name_id=logout.get("name_id"),
        session_index=logout.get("session_index") or None,
        nq=logout.get("name_id_nq") or None,
        name_id_format=logout.get("name_id_format") or None,
        spnq=logout.get("name_id_spnq") or None,
    )
    return url, auth.get_last_request_id()


Binding = Literal["redirect", "post"]


def _check_embedded_signature(root: etree._Element, xml: bytes, idp: SamlIdP, kind: str) -> bool:
    """For HTTP-POST logout messages: a signature over the whole message by the IdP. False if unsigned."""
    signatures = root.findall(f"{{{C.NS_DS}}}Signature")
    if not signatures:
        return False
    refs = signatures[0].findall(f"{{{C.NS_DS}}}SignedInfo/{{{C.NS_DS}}}Reference")
    if len(signatures) != 1 or len(refs) != 1 or refs[0].get("URI") != f"#{root.get('ID')}":
        raise SSOError(401, "saml_signature_invalid", f"the {kind} signature does not cover the message")
    pems = [idp.x509_cert, *([idp.x509_cert_next] if idp.x509_cert_next else [])]
    certs = [OneLogin_Saml2_Utils.format_cert(pem) for pem in pems]
    xpath = f"/samlp:{kind}/ds:Signature"
    for cert in certs:
        if OneLogin_Saml2_Utils.validate_sign(xml, cert, xpath=xpath, raise_exceptions=False):
            return True
    raise SSOError(401, "saml_signature_invalid", f"the {kind} is not signed by the identity provider")


@dataclass(frozen=True)
class LogoutRequestIn:
    request_id: str
    name_id: str
    session_indexes: list[str]


def accept_logout_request(
    settings: OneLogin_Saml2_Settings, idp: SamlIdP, urls: SpUrls, binding: Binding, params: dict[str, str]
) -> LogoutRequestIn:
    """An IdP-initiated LogoutRequest, which must be signed (it ends sessions)."""
    message = params["SAMLRequest"]
    try:
        request = OneLogin_Saml2_Logout_Request(settings, message)
        xml = request.get_xml()
        xml_bytes = xml.encode() if isinstance(xml, str) else xml
        root = OneLogin_Saml2_XML.to_etree(xml_bytes)
    except Exception as exc:
        raise SSOError(400, "saml_response_invalid", "SAMLRequest is not a SAML LogoutRequest",
                       {"reason": str(exc)}) from None  # fmt: skip
    if binding == "post":
        signed = _check_embedded_signature(root, xml_bytes, idp, "LogoutRequest")
    else:
        signed = "Signature" in params
        auth = OneLogin_Saml2_Auth(request_data(urls.slo, get=params), old_settings=settings)
        if signed and not auth.validate_request_signature(params):
            raise SSOError(401, "saml_signature_invalid", "the LogoutRequest signature does not verify")
    if not signed:
        raise SSOError(401, "saml_signature_invalid", "an unsigned LogoutRequest cannot end sessions")
    try:
        request.is_valid(request_data(urls.slo, get=params if binding == "redirect" else None),
                         raise_exceptions=True)  # fmt: skip
        name_id = OneLogin_Saml2_Logout_Request.get_nameid(xml_bytes)
        indexes = OneLogin_Saml2_Logout_Request.get_session_indexes(xml_bytes)
    except (V, OneLogin_Saml2_Error) as exc:
        raise refusal(exc) from None
    return LogoutRequestIn(request_id=request.id, name_id=name_id, session_indexes=list(indexes))


def logout_response_for(
    settings: OneLogin_Saml2_Settings,
    urls: SpUrls,
    binding: Binding,
    in_response_to: str,
    relay_state: str | None,
) -> tuple[Binding, str]:
    """Our LogoutResponse, in the binding the request came by: a redirect URL, or an auto-posting page."""
    builder = OneLogin_Saml2_Logout_Response(settings)
    builder.build(in_response_to)
    security = settings.get_security_data()
    destination = settings.get_idp_slo_response_url() or settings.get_idp_slo_url()
    if binding == "redirect":
        params: dict[str, str] = {"SAMLResponse": builder.get_response(deflate=True)}
        if relay_state:
            params["RelayState"] = relay_state
        if security["logoutResponseSigned"]:
            auth = OneLogin_Saml2_Auth(request_data(urls.slo), old_settings=settings)
            auth.add_response_signature(params, security["signatureAlgorithm"])
        return "redirect", OneLogin_Saml2_Utils.redirect(destination, params)
    xml = builder.get_xml()
    if security["logoutResponseSigned"]:
        sp = settings.get_sp_data()
        xml = OneLogin_Saml2_Utils.add_sign(xml, sp["privateKey"], sp["x509cert"],
                                            sign_algorithm=C.RSA_SHA256, digest_algorithm=C.SHA256)  # fmt: skip
    body = base64.b64encode(xml if isinstance(xml, bytes) else xml.encode()).decode()
    return "post", auto_post_page(destination, {"SAMLResponse": body, "RelayState": relay_state or ""})


def accept_logout_response(
    settings: OneLogin_Saml2_Settings, idp: SamlIdP, urls: SpUrls, binding: Binding, params: dict[str, str],
    request_id: str,
) -> None:  # fmt: skip
    """The IdP's answer to our LogoutRequest: it must answer that request, from that IdP, to this endpoint."""
    try:
        response = OneLogin_Saml2_Logout_Response(settings, params["SAMLResponse"])
        xml = response.get_xml()
        xml_bytes = xml.encode() if isinstance(xml, str) else xml
    except Exception as exc:
        raise SSOError(400, "saml_response_invalid", "SAMLResponse is not a SAML LogoutResponse",
                       {"reason": str(exc)}) from None  # fmt: skip
    if binding == "post":
        _check_embedded_signature(OneLogin_Saml2_XML.to_etree(xml_bytes), xml_bytes, idp, "LogoutResponse")
    elif "Signature" in params:
        auth = OneLogin_Saml2_Auth(request_data(urls.slo, get=params), old_settings=settings)
        if not auth.validate_response_signature(params):
            raise SSOError(401, "saml_signature_invalid", "the LogoutResponse signature does not verify")
    try:
        response.is_valid(request_data(urls.slo, get=params), request_id, raise_exceptions=True)
    except (V, OneLogin_Saml2_Error) as exc:
        raise refusal(exc) from None
    if response.get_in_response_to() != request_id:
        raise SSOError(401, "saml_in_response_to_mismatch", "the LogoutResponse answers another request")
    if response.get_status() != C.STATUS_SUCCESS:
        raise SSOError(401, "saml_idp_refused", "the identity provider did not complete the logout",
                       {"status": response.get_status()})  # fmt: skip


AUTO_SUBMIT = "document.forms[0].submit()"


def auto_post_policy(action: str) -> str:
    """The page's own content security policy (the app-wide one allows no inline script): its one
    event handler by hash, its form only towards the IdP, and no framing."""
    digest = base64.b64encode(hashlib.sha256(AUTO_SUBMIT.encode()).digest()).decode()
    parts = urlsplit(action)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "'none'"
    return (f"default-src 'none'; script-src 'unsafe-hashes' 'sha256-{digest}'; form-action {origin}; "
            "base-uri 'none'; frame-ancestors 'none'")  # fmt: skip


def auto_post_page(action: str, fields: dict[str, str]) -> str:
    """The HTTP-POST binding: a page whose form the browser submits itself."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Continue</title></head>"
        f"<body onload='{AUTO_SUBMIT}'>"
        f'<form method="post" action="{html.escape(action)}">{inputs}'
        "<noscript><button type='submit'>Continue</button></noscript></form></body></html>"
    )
