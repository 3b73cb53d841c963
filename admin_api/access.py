"""Who may do what to which unit: every permission decision of the admin API, in one place.

Roles come from two tables. `AdminScope` rows (admin, finance, auditor) and
`Membership` rows (student, ta, instructor, researcher) both cover their unit
and every unit below it. The rules, as a finance office and a registrar would
expect them:

* **admin** manages the people of their units (rosters, keys) including their
  own unit, and sets the *rules* (budget, extras, model policy, structure,
  who administers) only of units strictly below their own: never their own
  cap, nothing above or beside. The root has nobody above it, so its admins
  (institution admins) set its rules, and they alone manage providers, models
  and prices.
* **finance** reads units, budgets, usage and exports of its scope; changes nothing.
* **auditor** reads everything of its scope (audit log included); changes nothing.
* **instructor** manages a course's roster (students and TAs only), issues and
  revokes its members' keys, and reads its usage. The people must be students
  or TAs too: nobody holding an admin, finance or auditor scope or another role
  anywhere (roster.beyond_instructors), so an instructor cannot enrol the bursar
  and take a key in her name.
* **ta** reads the course roster.
* **student**, **researcher**: their own keys, their own usage and explanation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from admin_api.auth import Caller
from admin_api.errors import forbidden, not_found
from admin_api.tree import UnitTree, load_tree
from core.models import AdminScope, Membership, Unit
from core.time import utcnow

SCOPE_ROLES = ("admin", "finance", "auditor")
MEMBER_ROLES = ("student", "ta", "instructor", "researcher")
INSTRUCTOR_MANAGED = frozenset({"student", "ta"})
READERS = frozenset(SCOPE_ROLES)


@dataclass
class Grants:
    scopes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # role -> unit ids
    memberships: dict[str, str] = field(default_factory=dict)  # unit id -> role


async def load_grants(
    session: AsyncSession, institution_id: str, user_id: str, grace_seconds: float = 0
) -> Grants:
    """The person's roles now: a membership past its end and the operator's grace
    (EDUAIQ_MEMBERSHIP_GRACE_SECONDS, as for its keys) grants nothing."""
    grants = Grants()
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    scopes = await session.execute(
        select(AdminScope).where(AdminScope.institution_id == institution_id, AdminScope.user_id == user_id)
    )
    for s in scopes.scalars():
        grants.scopes[s.role].add(s.unit_id)
    members = await session.execute(
        select(Membership).where(Membership.institution_id == institution_id, Membership.user_id == user_id)
    )
    for m in members.scalars():
        if m.ends_at is None or m.ends_at > cutoff:
            grants.memberships[m.unit_id] = m.role
    return grants


@dataclass
class Access:
    caller: Caller
    tree: UnitTree
    grants: Grants

    # --- building blocks --------------------------------------------------------------------

    def unit(self, unit_id: str) -> Unit:
        """The unit, or 404: checked before any permission, so a typo reads as a typo."""
        found = self.tree.get(unit_id)
        if found is None:
            raise not_found("unit", unit_id)
        return found

    def scope_covers(self, roles: frozenset[str] | tuple[str, ...], unit_id: str) -> bool:
        path = self.tree.path(unit_id)
        return any(u in self.grants.scopes.get(r, ()) for r in roles for u in path)

    def member_covers(self, roles: frozenset[str] | tuple[str, ...], unit_id: str) -> bool:
        return any(self.grants.memberships.get(u) in roles for u in self.tree.path(unit_id))

    def admin_above(self, unit_id: str) -> bool:
        """Admin of a unit strictly above this one, or an institution admin for the root."""
        path = self.tree.path(unit_id)
        admin = self.grants.scopes.get("admin", set())
        if len(path) == 1:
            return unit_id in admin
        return any(u in admin for u in path[1:])

    @property
    def institution_admin(self) -> bool:
        root = self.tree.root
        return root is not None and root in self.grants.scopes.get("admin", set())

    @property
    def has_any_scope(self) -> bool:
        return any(self.grants.scopes.get(r) for r in SCOPE_ROLES)

    def visible_roots(self) -> list[str]:
        """Tops of the subtrees the caller may browse: scope units, then units they belong to."""
        tops = set().union(*(self.grants.scopes.get(r, set()) for r in SCOPE_ROLES))
        tops |= set(self.grants.memberships)
        tops = {u for u in tops if u in self.tree.units}
        return [u for u in sorted(tops) if not any(a in tops for a in self.tree.path(u)[1:])]

    # --- decisions ----------------------------------------------------------------------------

    def can_read_unit(self, unit_id: str) -> bool:
        return self.scope_covers(READERS, unit_id) or self.member_covers(MEMBER_ROLES, unit_id)

    def can_edit_rules(self, unit_id: str) -> bool:
        return self.admin_above(unit_id)

    def can_create_under(self, parent_id: str) -> bool:
        return self.scope_covers(("admin",), parent_id)

    def can_read_roster(self, unit_id: str) -> bool:
        return self.scope_covers(("admin", "auditor"), unit_id) or self.member_covers(
            ("instructor", "ta"), unit_id
        )

    def can_edit_roster(self, unit_id: str, roles: set[str]) -> bool:
        if self.scope_covers(("admin",), unit_id):
            return True
        return self.member_covers(("instructor",), unit_id) and roles <= INSTRUCTOR_MANAGED

    def can_read_scopes(self, unit_id: str) -> bool:
        return self.scope_covers(("admin", "auditor"), unit_id)

    def can_read_keys(self, unit_id: str) -> bool:
        return self.scope_covers(("admin", "auditor"), unit_id) or self.member_covers(
            ("instructor",), unit_id
        )

    def can_manage_keys(self, unit_id: str) -> bool:
        return self.scope_covers(("admin",), unit_id) or self.member_covers(("instructor",), unit_id)

    def can_read_usage(self, unit_id: str) -> bool:
        return self.scope_covers(READERS, unit_id) or self.member_covers(("instructor",), unit_id)

    def can_export(self, unit_id: str) -> bool:
        return self.scope_covers(READERS, unit_id)

    def can_read_audit(self, unit_id: str) -> bool:
        return self.scope_covers(("admin", "auditor"), unit_id)

    def can_read_catalog(self) -> bool:
        return self.has_any_scope

    # --- guards -------------------------------------------------------------------------------

    def require(self, allowed: bool, message: str, unit_id: str | None = None) -> None:
        if not allowed:
            raise forbidden(message, **({"unit": unit_id} if unit_id else {}))


async def load_access(session: AsyncSession, caller: Caller) -> Access:
    tree = await load_tree(session, caller.institution_id)
    grants = await load_grants(
        session, caller.institution_id, caller.user_id, caller.membership_grace_seconds
    )
    return Access(caller, tree, grants)
