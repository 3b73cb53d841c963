"""From an IdP's attributes to who the person is and which units they belong to.

Pure functions, identical for SAML, OIDC and CAS: each protocol module only
turns its wire format into `{attribute name: [values]}`. The default
convention (see README.md beside this file):

- eduPersonEntitlement `urn:mace:<institution>:course:<unit-id>:<role>`
  (or `...:unit:<unit-id>:<role>`),
- isMemberOf / groups `course:<unit-id>:<role>` (or `unit:<unit-id>:<role>`),

where a role in `member_roles` (student, ta, instructor, ...) makes a membership.
A role in `admin_roles` (admin, finance, auditor) makes an admin scope only when
the institution switched that on (`allow_admin_scopes`) and the value is an
entitlement in the institution's own namespace, `<prefix>unit:<unit-id>:<role>`
(`Mapping.admin_prefixes`): a group name like `unit:root:admin` must never make
someone an institution admin. Anything else is ignored, never guessed. Whether the named units exist is the
provisioning step's business, not this one's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from admin_api.sso.config import ROLE, UNIT_ID, AttributeKind, GrantRule
from admin_api.sso.config import Mapping as MappingConfig
from admin_api.sso.errors import SSOError

Attributes = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Identity:
    subject: str
    email: str | None = None
    name: str | None = None
    affiliations: tuple[str, ...] = ()
    memberships: Mapping[str, str] = field(default_factory=dict)  # unit id -> role
    admin_scopes: frozenset[tuple[str, str]] = frozenset()  # (unit id, role)
    ignored: tuple[str, ...] = ()  # values a rule matched but whose role is unknown


def normalize(raw: Mapping[str, object]) -> dict[str, list[str]]:
    """Any protocol's attribute bag as {name: [non-empty strings]}; nested objects are not attributes."""
    out: dict[str, list[str]] = {}
    for key, value in raw.items():
        items = value if isinstance(value, list | tuple) else [value]
        values = [str(v).strip() for v in items if isinstance(v, str | int | float | bool) and str(v).strip()]
        if values:
            out.setdefault(key, []).extend(values)
    return out


def _all(attrs: Attributes, names: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        for value in attrs.get(name, ()):
            seen.setdefault(value, None)
    return list(seen)


def _first(attrs: Attributes, names: Iterable[str]) -> str | None:
    for name in names:
        for value in attrs.get(name, ()):
            if value:
                return value
    return None


def _in_scope(value: str, scopes: Sequence[str]) -> bool:
    if not scopes:
        return True
    _, at, scope = value.rpartition("@")
    return bool(at) and scope.lower() in {s.lower() for s in scopes}


def _admin_rules(config: MappingConfig) -> list[GrantRule]:
    """The namespaced entitlement form, `<prefix>unit:<unit-id>:<role>`, for each accepted prefix."""
    return [
        GrantRule(
            attribute="entitlement", pattern=rf"{re.escape(prefix)}unit:(?P<unit>{UNIT_ID}):(?P<role>{ROLE})"
        )
        for prefix in config.admin_prefixes()
    ]


def _admin_value(value: str, attribute: AttributeKind, config: MappingConfig) -> bool:
    """May this matched value grant an admin role? Only a namespaced entitlement, only when switched on."""
    return (
        config.allow_admin_scopes and attribute == "entitlement" and value.startswith(config.admin_prefixes())
    )


def map_identity(
    institution_id: str, attrs: Attributes, config: MappingConfig, protocol_subject: str | None = None
) -> Identity:
    names = config.attributes
    subject = _first(attrs, names.subject)
    if subject is not None and not _in_scope(subject, config.scopes):
        raise SSOError(403, "identity_rejected", "the identity provider asserted a subject outside this "
                       "institution's scopes", {"allowed_scopes": list(config.scopes)})  # fmt: skip
    if subject is None and config.subject_fallback:
        subject = protocol_subject
    if not subject:
        raise SSOError(401, "identity_incomplete", "the identity provider sent no subject identifier",
                       {"expected_attributes": list(names.subject)})  # fmt: skip

    values: dict[AttributeKind, list[str]] = {
        "entitlement": _all(attrs, names.entitlement),
        "groups": _all(attrs, names.groups),
        "affiliation": _all(attrs, names.affiliation),
        "scoped_affiliation": [
            v for v in _all(attrs, names.scoped_affiliation) if _in_scope(v, config.scopes)
        ],
    }
    rank = {role: i for i, role in enumerate(config.member_roles)}
    admin = set(config.admin_roles)
    memberships: dict[str, str] = {}
    scopes: set[tuple[str, str]] = set()
    ignored: list[str] = []
    for rule in [*config.rules, *_admin_rules(config)]:
        pattern = rule.compiled(institution_id)
        for value in values[rule.attribute]:
            match = pattern.fullmatch(value)
            if not match:
                continue
            groups = match.groupdict()
            unit = groups.get("unit") or rule.unit
            role = groups.get("role") or rule.role
            if not unit or not role:
                continue
            role = rule.roles.get(role, role)
            if role in admin:
                if _admin_value(value, rule.attribute, config):
                    scopes.add((unit, role))
                else:
                    ignored.append(value)
            elif role in rank:
                current = memberships.get(unit)
                if current is None or rank[role] < rank[current]:
                    memberships[unit] = role
            else:
                ignored.append(value)
    affiliations = tuple(dict.fromkeys(values["affiliation"] + values["scoped_affiliation"]))
    return Identity(
        subject=subject,
        email=_first(attrs, names.email),
        name=_first(attrs, names.name),
        affiliations=affiliations,
        memberships=memberships,
        admin_scopes=frozenset(scopes),
        ignored=tuple(ignored),
    )
