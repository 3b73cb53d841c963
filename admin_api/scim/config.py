"""The institution file's `scim:` section: which SCIM groups make which memberships and admin scopes.

A rule names a group exactly (`display_name`) or by a pattern (`match`, a regular expression matched
against the whole group name, whose named group `unit` captures the unit id, Grouper-style
`uni:courses:(?P<unit>[a-z0-9-]+):students`). It grants a member `role` in the unit, or an `admin_role`
(admin, finance, auditor). An admin role is only granted by an exact group name naming a fixed unit: a
pattern could otherwise let whoever names groups in the IdP become an administrator of any unit, the
institution's root included. Nothing that no rule maps is ever granted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ROLE_PATTERN = r"^[a-z][a-z_\-]{0,31}$"
UNIT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
_UNIT_RE = re.compile(UNIT_PATTERN)
# When two rules give one person two roles in one unit, the first of these wins (as SSO's default order).
ROLE_PRECEDENCE = ("instructor", "ta", "researcher", "student", "member")


class GroupRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str | None = Field(default=None, min_length=1, max_length=512)
    display_name: str | None = Field(default=None, min_length=1, max_length=256)
    unit: str | None = Field(default=None, pattern=UNIT_PATTERN)
    role: str | None = Field(default=None, pattern=ROLE_PATTERN)
    admin_role: Literal["admin", "finance", "auditor"] | None = None

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GroupRule:
        if (self.match is None) == (self.display_name is None):
            raise ValueError("give exactly one of match or display_name")
        if (self.role is None) == (self.admin_role is None):
            raise ValueError("give exactly one of role or admin_role")
        if self.admin_role is not None and (self.display_name is None or self.unit is None):
            raise ValueError("an admin_role is granted only by an exact display_name with a fixed unit")
        if self.unit is None:
            if self.match is None or "unit" not in re.compile(self.match).groupindex:
                raise ValueError("give unit, or a match pattern with a named group (?P<unit>...)")
        return self

    def unit_for(self, group_name: str) -> str | None:
        """The unit this rule maps `group_name` to, or None when it does not apply."""
        if self.display_name is not None:
            return self.unit if group_name == self.display_name else None
        assert self.match is not None
        found = re.fullmatch(self.match, group_name)
        if found is None:
            return None
        unit = self.unit or found.groupdict().get("unit")
        return unit if unit and _UNIT_RE.match(unit) else None


class ScimSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: list[GroupRule] = Field(default=[], max_length=500)


def map_groups(section: ScimSection, names: Iterable[str]) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """Group names -> ({unit: member role}, {(unit, admin role)}). A unit two rules give two roles gets the
    one earliest in ROLE_PRECEDENCE (then the alphabetically first, so the answer never depends on order)."""
    memberships: dict[str, str] = {}
    scopes: set[tuple[str, str]] = set()

    def rank(role: str) -> tuple[int, str]:
        return (ROLE_PRECEDENCE.index(role) if role in ROLE_PRECEDENCE else len(ROLE_PRECEDENCE), role)

    for name in names:
        for rule in section.groups:
            unit = rule.unit_for(name)
            if unit is None:
                continue
            if rule.admin_role is not None:
                scopes.add((unit, rule.admin_role))
            elif rule.role is not None:
                current = memberships.get(unit)
                if current is None or rank(rule.role) < rank(current):
                    memberships[unit] = rule.role
    return memberships, scopes


def scim_checks(section: dict[str, Any], unit_ids: set[Any]) -> list[tuple[str, str]]:
    """The file's cross-check: a rule's fixed `unit` is a unit of this file (a typo would silently grant
    nothing). Units a pattern captures are only known when a group arrives; those that do not exist are
    skipped then."""
    groups = section.get("groups") if isinstance(section, dict) else None
    return [
        (f"scim.groups[{i}].unit", f"unknown unit {rule['unit']!r}")
        for i, rule in enumerate(groups if isinstance(groups, list) else [])
        if isinstance(rule, dict) and rule.get("unit") is not None and rule["unit"] not in unit_ids
    ]
