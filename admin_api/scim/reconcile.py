"""Group membership -> unit memberships and admin scopes, at once (not at the person's next sign-in).

SCIM is "in use" for an institution when its file has a `scim:` section (a `ScimSettings` row). Then, for
each person whose groups changed, the mapping (config.py) of all their groups is the desired set, and:
- a missing membership is created with `source = "scim"`; an "scim" or "sso" row in a unit the groups map
  to takes the mapped role and becomes "scim" (SCIM is now the authority for it);
- an "scim" or "sso" row the groups no longer map to is deleted (its keys go with it: the gateway's key
  lookup then misses, so they stop within the key cache TTL); archived units keep theirs (history);
- admin scopes likewise, only from rules with an `admin_role`;
- rows from the institution file or the admin API ("file", "api") are never touched.
Without a `scim:` section the groups map to nothing: "scim" rows are removed, "sso" rows are left to SSO.
Every change is an audit entry attributed to `scim:<token id>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from admin_api.scim.config import ScimSection, map_groups
from core.models import AdminScope, AuditEntry, Membership, ScimGroup, ScimGroupMember, ScimSettings, Unit

SOURCE = "scim"
# Set in `session.info` when memberships or scopes changed, so the caller tells quota and the gateways.
RECONCILED = "scim_reconciled"


async def scim_section(session: AsyncSession, institution_id: str) -> ScimSection | None:
    row = await session.get(ScimSettings, institution_id)
    return None if row is None else ScimSection.model_validate(row.config)


async def reconcile(session: AsyncSession, institution_id: str, user_ids: Iterable[str], actor: str) -> int:
    """Bring each person's memberships and admin scopes in line with their SCIM groups; the number of
    rows changed."""
    users = sorted(set(user_ids))
    if not users:
        return 0
    section = await scim_section(session, institution_id)
    owned = {SOURCE, "sso"} if section is not None else {SOURCE}
    units = {
        uid: bool(archived)
        for uid, archived in (
            await session.execute(
                select(Unit.id, Unit.archived).where(col(Unit.institution_id) == institution_id)
            )
        ).all()
    }
    changed = 0
    for user_id in users:
        names = (
            (
                await session.execute(
                    select(ScimGroup.display_name)
                    .join(
                        ScimGroupMember,
                        (col(ScimGroupMember.institution_id) == col(ScimGroup.institution_id))
                        & (col(ScimGroupMember.group_id) == col(ScimGroup.id)),
                    )
                    .where(
                        col(ScimGroupMember.institution_id) == institution_id,
                        col(ScimGroupMember.user_id) == user_id,
                    )
                )
            )
            .scalars()
            .all()
        )
        wanted, wanted_scopes = map_groups(section, names) if section is not None else ({}, set())
        wanted = {u: r for u, r in wanted.items() if units.get(u) is False}
        wanted_scopes = {(u, r) for u, r in wanted_scopes if units.get(u) is False}
        changed += await _memberships(session, institution_id, user_id, wanted, owned, units, actor)
        changed += await _scopes(session, institution_id, user_id, wanted_scopes, owned, units, actor)
    if changed:
        session.info[RECONCILED] = True
    return changed


def _audit(session: AsyncSession, inst: str, actor: str, action: str, target: str,
           before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:  # fmt: skip
    session.add(AuditEntry(institution_id=inst, actor=actor, action=action, target=target, before=before,
                           after=after))  # fmt: skip


async def _memberships(session: AsyncSession, inst: str, user_id: str, wanted: dict[str, str], owned: set[str],
                       units: dict[str, bool], actor: str) -> int:  # fmt: skip
    rows = (
        (
            await session.execute(
                select(Membership).where(
                    col(Membership.institution_id) == inst, col(Membership.user_id) == user_id
                )
            )
        )
        .scalars()
        .all()
    )
    current = {m.unit_id: m for m in rows}
    changed = 0
    for unit_id, role in sorted(wanted.items()):
        target = f"membership:{inst}/{unit_id}/{user_id}"
        row = current.get(unit_id)
        if row is None:
            row = Membership(institution_id=inst, unit_id=unit_id, user_id=user_id, role=role, source=SOURCE)
            session.add(row)
            _audit(session, inst, actor, "scim.membership.create", target, None, row.model_dump(mode="json"))
            changed += 1
        elif row.source in owned and (row.role != role or row.source != SOURCE or row.ends_at is not None):
            before = row.model_dump(mode="json")
            row.role, row.source, row.ends_at = role, SOURCE, None
            _audit(
                session, inst, actor, "scim.membership.update", target, before, row.model_dump(mode="json")
            )
            changed += 1
    for unit_id, row in sorted(current.items()):
        if unit_id in wanted or row.source not in owned or units.get(unit_id, False):
            continue
        _audit(session, inst, actor, "scim.membership.remove", f"membership:{inst}/{unit_id}/{user_id}",
               row.model_dump(mode="json"), None)  # fmt: skip
        await session.delete(row)
        changed += 1
    await session.flush()
    return changed


async def _scopes(session: AsyncSession, inst: str, user_id: str, wanted: set[tuple[str, str]], owned: set[str],
                  units: dict[str, bool], actor: str) -> int:  # fmt: skip
    rows = (
        (
            await session.execute(
                select(AdminScope).where(
                    col(AdminScope.institution_id) == inst, col(AdminScope.user_id) == user_id
                )
            )
        )
        .scalars()
        .all()
    )
    current = {(s.unit_id, s.role): s for s in rows}
    changed = 0
    for unit_id, role in sorted(wanted - set(current)):
        scope = AdminScope(institution_id=inst, unit_id=unit_id, user_id=user_id, role=role, source=SOURCE)
        session.add(scope)
        _audit(session, inst, actor, "scim.admin_scope.create", f"admin_scope:{inst}/{unit_id}/{user_id}/{role}",
               None, scope.model_dump(mode="json"))  # fmt: skip
        changed += 1
    for key, scope in sorted(current.items()):
        if key in wanted or scope.source not in owned or units.get(key[0], False):
            continue
        _audit(session, inst, actor, "scim.admin_scope.remove", f"admin_scope:{inst}/{key[0]}/{user_id}/{key[1]}",
               scope.model_dump(mode="json"), None)  # fmt: skip
        await session.delete(scope)
        changed += 1
    await session.flush()
    return changed


async def everyone_in_groups(session: AsyncSession, institution_id: str) -> list[str]:
    stmt = (
        select(ScimGroupMember.user_id)
        .where(col(ScimGroupMember.institution_id) == institution_id)
        .distinct()
    )
    return list((await session.execute(stmt)).scalars())
