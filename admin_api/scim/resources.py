"""SCIM User and Group JSON to and from EduAiQ's rows.

A User is the ordinary `User` row: `id` is the user id, `userName` is the SSO subject (what sign-in finds
a person by, so a person provisioned here who later signs in is the same user), `externalId` is
`external_id`, `active` is "not deprovisioned", `displayName` (else `name.formatted`, else given and
family name) is `name` and the primary e-mail is `email`. The rest of what the IdP sent for the declared
schemas (name parts, every e-mail, the enterprise extension) is kept in `ScimUser.attributes` and returned
as sent. An erased person's stored attributes are never returned: only their id and state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from admin_api.scim.errors import invalid_syntax, invalid_value
from admin_api.scim.schemas import ENTERPRISE, GROUP, USER
from core.models import ScimGroup, ScimUser, User

MAX_MEMBERS = 20_000
_NAME_PARTS = ("formatted", "familyName", "givenName")
_ENTERPRISE_STRINGS = ("employeeNumber", "costCenter", "organization", "division", "department")


def _fields(body: Any, kind: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_syntax(f"a {kind} is a JSON object")
    schemas = body.get("schemas")
    if schemas is not None and not (isinstance(schemas, list) and all(isinstance(s, str) for s in schemas)):
        raise invalid_syntax("schemas is a list of URNs")
    return {str(k).lower(): v for k, v in body.items()}


def _string(value: Any, name: str, max_len: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise invalid_value(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise invalid_value(f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise invalid_value(f"{name} must not be empty")
    if len(value) > max_len:
        raise invalid_value(f"{name} is longer than {max_len} characters")
    if "\x00" in value:
        raise invalid_value(f"{name} holds a NUL character")
    return value or None


def parse_bool(value: Any, name: str) -> bool:
    """SCIM booleans, and the strings Entra ID sends for them (`"False"`, `"True"`)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise invalid_value(f"{name} must be true or false")


@dataclass
class UserIn:
    user_name: str
    external_id: str | None
    active: bool | None  # None: not given (unchanged)
    name: str | None
    email: str | None
    attributes: dict[str, Any] = field(default_factory=dict)


def parse_user(body: Any) -> UserIn:
    f = _fields(body, "User")
    user_name = _string(f.get("username"), "userName", 256, required=True)
    assert user_name is not None
    attributes: dict[str, Any] = {}
    display = _string(f.get("displayname"), "displayName", 512)
    if display:
        attributes["displayName"] = display
    name_obj = f.get("name")
    if name_obj is not None:
        if not isinstance(name_obj, dict):
            raise invalid_value("name must be an object")
        parts = {str(k).lower(): v for k, v in name_obj.items()}
        name_out = {p: s for p in _NAME_PARTS if (s := _string(parts.get(p.lower()), f"name.{p}", 512))}
        if name_out:
            attributes["name"] = name_out
    emails_in = f.get("emails")
    emails: list[dict[str, Any]] = []
    if emails_in is not None:
        if not isinstance(emails_in, list) or len(emails_in) > 20:
            raise invalid_value("emails must be a list of at most 20 objects")
        for item in emails_in:
            if not isinstance(item, dict):
                raise invalid_value("each of emails is an object")
            e = {str(k).lower(): v for k, v in item.items()}
            value = _string(e.get("value"), "emails.value", 320)
            if value is None:
                continue
            out: dict[str, Any] = {"value": value}
            if (kind := _string(e.get("type"), "emails.type", 32)) is not None:
                out["type"] = kind
            if e.get("primary") is not None:
                out["primary"] = parse_bool(e.get("primary"), "emails.primary")
            emails.append(out)
    if emails:
        attributes["emails"] = emails
    active = None if f.get("active") is None else parse_bool(f.get("active"), "active")
    if active is not None:
        attributes["active"] = active
    ext = next((v for k, v in body.items() if isinstance(k, str) and k.lower() == ENTERPRISE.lower()), None)
    if ext is not None:
        if not isinstance(ext, dict):
            raise invalid_value(f"{ENTERPRISE} must be an object")
        low = {str(k).lower(): v for k, v in ext.items()}
        ext_out: dict[str, Any] = {
            a: s for a in _ENTERPRISE_STRINGS if (s := _string(low.get(a.lower()), a, 512))
        }
        manager = low.get("manager")
        if isinstance(manager, dict):
            m = {str(k).lower(): v for k, v in manager.items()}
            mgr = {
                a: s
                for a in ("value", "$ref", "displayName")
                if (s := _string(m.get(a.lower()), f"manager.{a}", 512))
            }
            if mgr:
                ext_out["manager"] = mgr
        elif isinstance(manager, str) and manager.strip():
            ext_out["manager"] = {"value": _string(manager, "manager", 512)}
        elif manager is not None:
            raise invalid_value("manager must be an object")
        if ext_out:
            attributes[ENTERPRISE] = ext_out
    primary = next((e["value"] for e in emails if e.get("primary")), emails[0]["value"] if emails else None)
    name_parts = attributes.get("name", {})
    full = (
        display
        or name_parts.get("formatted")
        or " ".join(p for p in (name_parts.get("givenName"), name_parts.get("familyName")) if p)
    )
    return UserIn(
        user_name=user_name,
        external_id=_string(f.get("externalid"), "externalId", 255),
        active=active,
        name=full or None,
        email=primary,
        attributes=attributes,
    )


def user_name_of(user: User) -> str:
    return user.sso_subject or user.id


def _meta(kind: str, created: datetime, modified: datetime, location: str) -> dict[str, Any]:
    def ts(t: datetime) -> str:
        return t.replace(microsecond=0).isoformat().replace("+00:00", "Z") + ("" if t.tzinfo else "Z")

    return {"resourceType": kind, "created": ts(created), "lastModified": ts(modified), "location": location}


def user_resource(user: User, row: ScimUser | None, groups: list[ScimGroup], base: str) -> dict[str, Any]:
    scim = row is not None and user.erased_at is None
    attrs = dict(row.attributes) if scim and row is not None else {}
    out: dict[str, Any] = {"schemas": [USER], "id": user.id, "userName": user_name_of(user)}
    if user.external_id:
        out["externalId"] = user.external_id
    # `active` as the IdP last wrote it; a deprovisioned person always reads active: false.
    if not scim or "active" in attrs or user.deprovisioned_at is not None:
        out["active"] = user.deprovisioned_at is None
    if scim:
        for key in ("displayName", "name"):
            if attrs.get(key):
                out[key] = attrs[key]
    elif user.name:
        out["displayName"], out["name"] = user.name, {"formatted": user.name}
    stored = attrs.get("emails") or []
    if stored and any(e.get("value") == user.email for e in stored):
        out["emails"] = stored
    elif user.email:
        out["emails"] = [{"value": user.email, "type": "work", "primary": True}]
    if attrs.get(ENTERPRISE):
        out["schemas"].append(ENTERPRISE)
        out[ENTERPRISE] = attrs[ENTERPRISE]
    if groups:
        out["groups"] = [
            {"value": g.id, "display": g.display_name, "$ref": f"{base}/Groups/{g.id}"} for g in groups
        ]
    modified = row.updated_at if row is not None else user.created_at
    out["meta"] = _meta("User", user.created_at, max(modified, user.created_at), f"{base}/Users/{user.id}")
    return out


@dataclass
class GroupIn:
    display_name: str
    external_id: str | None
    members: list[str] | None  # user ids; None: not given


def parse_group(body: Any) -> GroupIn:
    f = _fields(body, "Group")
    display = _string(f.get("displayname"), "displayName", 256, required=True)
    assert display is not None
    members_in = f.get("members")
    members: list[str] | None = None
    if members_in is not None:
        if not isinstance(members_in, list) or len(members_in) > MAX_MEMBERS:
            raise invalid_value(f"members must be a list of at most {MAX_MEMBERS} objects")
        members = []
        for item in members_in:
            value = item.get("value") if isinstance(item, dict) else None
            if not isinstance(value, str) or not value or len(value) > 128:
                raise invalid_value("each member is an object with a user id as value")
            members.append(value)
        members = list(dict.fromkeys(members))
    return GroupIn(display, _string(f.get("externalid"), "externalId", 255), members)


def group_resource(group: ScimGroup, members: list[tuple[str, str | None]], base: str) -> dict[str, Any]:
    out: dict[str, Any] = {"schemas": [GROUP], "id": group.id, "displayName": group.display_name}
    if group.external_id:
        out["externalId"] = group.external_id
    out["members"] = [
        {"value": uid, "$ref": f"{base}/Users/{uid}", **({"display": name} if name else {})}
        for uid, name in members
    ]
    out["meta"] = _meta("Group", group.created_at, group.updated_at, f"{base}/Groups/{group.id}")
    return out


def project(resource: dict[str, Any], attributes: str | None, excluded: str | None) -> dict[str, Any]:
    """`attributes` / `excludedAttributes` (RFC 7644 §3.9) on top-level names (a dotted name keeps or drops
    its parent's sub-attribute); id and schemas are always returned."""

    def names(spec: str) -> list[list[str]]:
        out = []
        for raw in spec.split(",")[:100]:
            raw = raw.strip()
            if raw.lower().startswith("urn:") and raw.count(":") > 1:
                urn, _, attr = raw.rpartition(":")
                if urn.lower() in (USER.lower(), GROUP.lower()):
                    raw = attr
                elif urn.lower() == ENTERPRISE.lower():
                    out.append([ENTERPRISE.lower(), *attr.lower().split(".")])
                    continue
                else:
                    out.append([raw.lower()])
                    continue
            if raw:
                out.append(raw.lower().split("."))
        return out

    always = {"id", "schemas"}
    if attributes:
        wanted = names(attributes)
        kept: dict[str, Any] = {}
        for key, value in resource.items():
            low = key.lower()
            if low in always:
                kept[key] = value
                continue
            subs = [w[1:] for w in wanted if w[0] == low]
            if not subs:
                continue
            if any(not s for s in subs) or not isinstance(value, dict | list):
                kept[key] = value
            elif isinstance(value, dict):
                kept[key] = {k: v for k, v in value.items() if any(k.lower() == s[0] for s in subs)}
            else:
                kept[key] = [{k: v for k, v in i.items() if any(k.lower() == s[0] for s in subs)}
                             if isinstance(i, dict) else i for i in value]  # fmt: skip
        resource = kept
    if excluded:
        for path in names(excluded):
            for key in list(resource):
                if key.lower() != path[0] or key.lower() in always:
                    continue
                if len(path) == 1:
                    del resource[key]
                elif isinstance(resource[key], dict):
                    resource[key] = {k: v for k, v in resource[key].items() if k.lower() != path[1]}
    return resource
