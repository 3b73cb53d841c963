"""What the service provider declares (RFC 7643 §5-7): its configuration, resource types and schemas.

Declared honestly: PATCH and filters are supported; bulk, sort, ETags and password changes are not. The
schemas list exactly the attributes the server keeps and returns; an IdP (and scim2-tester) reads them
to decide what to send.
"""

from __future__ import annotations

from typing import Any

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SPC = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"

MAX_RESULTS = 200  # `count` is capped here
MAX_BODY_BYTES = 256 * 1024


def _attr(name: str, type_: str = "string", *, multi: bool = False, required: bool = False,
          mutability: str = "readWrite", returned: str = "default", uniqueness: str = "none",
          case_exact: bool = False, sub: list[dict[str, Any]] | None = None,
          canonical: list[str] | None = None, refs: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {
        "name": name, "type": type_, "multiValued": multi, "description": name, "required": required,
        "mutability": mutability, "returned": returned,
    }  # fmt: skip
    if type_ in ("string", "reference"):
        out["caseExact"] = case_exact
        out["uniqueness"] = uniqueness
    if sub is not None:
        out["subAttributes"] = sub
    if canonical is not None:
        out["canonicalValues"] = canonical
    if refs is not None:
        out["referenceTypes"] = refs
    return out


def _schema(urn: str, name: str, attributes: list[dict[str, Any]], base: str) -> dict[str, Any]:
    return {"schemas": [SCHEMA], "id": urn, "name": name, "description": name, "attributes": attributes,
            "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{urn}"}}  # fmt: skip


def user_schema(base: str) -> dict[str, Any]:
    return _schema(USER, "User", [
        _attr("userName", required=True, uniqueness="server"),
        _attr("name", "complex", sub=[_attr("formatted"), _attr("familyName"), _attr("givenName")]),
        _attr("displayName"),
        _attr("active", "boolean"),
        _attr("emails", "complex", multi=True, sub=[
            _attr("value"), _attr("type", canonical=["work", "home", "other"]), _attr("primary", "boolean"),
        ]),
        _attr("groups", "complex", multi=True, mutability="readOnly", sub=[
            _attr("value", mutability="readOnly"), _attr("display", mutability="readOnly"),
            _attr("$ref", "reference", mutability="readOnly", refs=["Group"]),
        ]),
    ], base)  # fmt: skip


def enterprise_schema(base: str) -> dict[str, Any]:
    return _schema(ENTERPRISE, "EnterpriseUser", [
        _attr("employeeNumber"), _attr("costCenter"), _attr("organization"), _attr("division"),
        _attr("department"),
        _attr("manager", "complex", sub=[
            _attr("value"), _attr("displayName", mutability="readOnly"),
            _attr("$ref", "reference", refs=["User"]),
        ]),
    ], base)  # fmt: skip


def group_schema(base: str) -> dict[str, Any]:
    return _schema(GROUP, "Group", [
        _attr("displayName", required=True, uniqueness="server"),
        _attr("members", "complex", multi=True, sub=[
            _attr("value", mutability="immutable"), _attr("display", mutability="readOnly"),
            _attr("$ref", "reference", mutability="immutable", refs=["User"]),
        ]),
    ], base)  # fmt: skip


def all_schemas(base: str) -> list[dict[str, Any]]:
    return [user_schema(base), enterprise_schema(base), group_schema(base)]


def resource_types(base: str) -> list[dict[str, Any]]:
    return [
        {"schemas": [RESOURCE_TYPE], "id": "User", "name": "User", "endpoint": "/Users", "description": "User",
         "schema": USER, "schemaExtensions": [{"schema": ENTERPRISE, "required": False}],
         "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/User"}},
        {"schemas": [RESOURCE_TYPE], "id": "Group", "name": "Group", "endpoint": "/Groups", "description": "Group",
         "schema": GROUP, "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/Group"}},
    ]  # fmt: skip


def service_provider_config(base: str) -> dict[str, Any]:
    return {
        "schemas": [SPC],
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "primary": True,
                "description": "The institution's token from `eduaiq scim token create`",
            },
        ],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base}/ServiceProviderConfig"},
    }
