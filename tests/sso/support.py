"""Helpers the SSO tests share: a scripted browser's form handling, SAML XML surgery, the org."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any
from urllib.parse import urljoin

from lxml import etree, html
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils

SP = "https://eduaiq.test"
NS = {"samlp": C.NS_SAMLP, "saml": C.NS_SAML, "ds": C.NS_DS}


def form_of(page: str, base_url: str, action_contains: str = "") -> tuple[str, dict[str, str]]:
    """The first form (whose action contains `action_contains`) as (absolute action URL, field values)."""
    doc = html.fromstring(page)
    for form in doc.forms:
        action = form.get("action") or base_url
        if action_contains in action:
            fields: dict[str, str] = {}
            for el in form.inputs:
                name = el.get("name")
                if not name:
                    continue
                if el.tag == "select":
                    chosen = el.value if el.value is not None else ""
                    fields[name] = str(chosen)
                elif el.get("type") in ("checkbox", "radio") and el.get("checked") is None:
                    continue
                elif el.get("type") != "submit":
                    fields[name] = el.get("value") or ""
            return urljoin(base_url, action), fields
    raise AssertionError(f"no form with action containing {action_contains!r} in page:\n{page[:2000]}")


# --- SAML response surgery -------------------------------------------------------------------


def decode_response(saml_response: str) -> etree._Element:
    return etree.fromstring(base64.b64decode(saml_response))


def encode_response(root: etree._Element) -> str:
    return base64.b64encode(etree.tostring(root)).decode()


def assertion_of(root: etree._Element) -> etree._Element:
    found = root.find("saml:Assertion", NS)
    assert found is not None, "response has no plain assertion"
    return found


def strip_signatures(root: etree._Element) -> etree._Element:
    for sig in root.findall(".//ds:Signature", NS):
        sig.getparent().remove(sig)
    return root


def resign_assertion(root: etree._Element, key_pem: str, cert_pem: str) -> etree._Element:
    """Sign the (modified) assertion afresh with the given key: the IdP's own, or an attacker's."""
    strip_signatures(root)
    assertion = assertion_of(root)
    signed = OneLogin_Saml2_Utils.add_sign(etree.tostring(assertion), key_pem, cert_pem)
    root.replace(assertion, etree.fromstring(signed))
    return root


def set_attribute(root: etree._Element, name: str, values: list[str]) -> None:
    for attr in assertion_of(root).iterfind("saml:AttributeStatement/saml:Attribute", NS):
        if attr.get("Name") == name:
            for old in list(attr):
                attr.remove(old)
            for value in values:
                el = etree.SubElement(attr, f"{{{C.NS_SAML}}}AttributeValue")
                el.text = value
            return
    raise AssertionError(f"no attribute {name}")


def saml_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def org_document(inst: str, users: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A small institution: root, a department, two courses, a file-granted instructor."""
    return {
        "institution": {"id": inst, "name": f"Test University {inst}", "currency": "USD", "timezone": "UTC"},
        "units": [
            {
                "id": inst,
                "kind": "university",
                "budget": {"period": "month", "cost": {"fixed": 1000}},
                "children": [
                    {
                        "id": "cs",
                        "kind": "department",
                        "children": [
                            {"id": "cs101", "kind": "course",
                             "members": [{"user": "prof-file", "role": "instructor"}]},
                            {"id": "cs102", "kind": "course"},
                        ],
                    },
                    {"id": "math", "kind": "department", "admins": ["prof-file"]},
                ],
            }
        ],
        "users": [
            {"id": "prof-file", "email": f"prof@{inst}.edu", "name": "Prof File",
             "sso_subject": f"prof@{inst}.edu"},
            *(users or []),
        ],
    }  # fmt: skip
