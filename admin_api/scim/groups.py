"""SCIM Groups: stored as the IdP sends them (id, displayName, externalId, members); every change of a
group's name or members reconciles its members' unit memberships at once (reconcile.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from admin_api.scim.errors import invalid_value, not_found, uniqueness
from admin_api.scim.reconcile import reconcile
from admin_api.scim.resources import GroupIn
from admin_api.scim.tokens import ScimCaller
from core.keys import new_id
from core.models import AuditEntry, ScimGroup, ScimGroupMember, ScimUser, User
from core.time import utcnow


async def load_group(session: AsyncSession, inst: str, group_id: str, *, lock: bool = False) -> ScimGroup:
    group = (
        await session.get(ScimGroup, (inst, group_id), with_for_update=lock) if len(group_id) <= 64 else None
    )
    if group is None:
        raise not_found("Group", group_id)
    return group


async def members_of(
    session: AsyncSession, inst: str, group_ids: list[str]
) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = {g: [] for g in group_ids}
    if not group_ids:
        return out
    rows = await session.execute(
        select(ScimGroupMember.group_id, User.id, User.name)
        .join(
            User,
            (col(User.institution_id) == col(ScimGroupMember.institution_id))
            & (col(User.id) == col(ScimGroupMember.user_id)),
        )
        .where(col(ScimGroupMember.institution_id) == inst, col(ScimGroupMember.group_id).in_(group_ids))
        .order_by(col(User.id))
    )
    for gid, uid, name in rows.all():
        out[gid].append((uid, name))
    return out


async def _check_name(session: AsyncSession, inst: str, name: str, group_id: str | None) -> None:
    stmt = select(ScimGroup.id).where(
        col(ScimGroup.institution_id) == inst, func.lower(col(ScimGroup.display_name)) == name.lower()
    )
    taken = (await session.execute(stmt)).scalars().first()
    if taken is not None and taken != group_id:
        raise uniqueness(f"a group named {name!r} exists")


async def _check_members(session: AsyncSession, inst: str, user_ids: list[str]) -> None:
    """Members must be this institution's people SCIM has not deleted: another institution's user id is
    as unknown as one that does not exist."""
    if not user_ids:
        return
    stmt = (
        select(User.id)
        .outerjoin(
            ScimUser,
            (col(ScimUser.institution_id) == col(User.institution_id))
            & (col(ScimUser.user_id) == col(User.id)),
        )
        .where(
            col(User.institution_id) == inst, col(User.id).in_(user_ids), col(ScimUser.deleted_at).is_(None)
        )
    )
    known = set((await session.execute(stmt)).scalars())
    unknown = [u for u in user_ids if u not in known]
    if unknown:
        raise invalid_value(f"no user {unknown[0]!r} to add to the group")


def _audit(session: AsyncSession, caller: ScimCaller, action: str, group: ScimGroup,
           before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:  # fmt: skip
    session.add(AuditEntry(institution_id=caller.institution_id, actor=caller.actor, action=action,
                           target=f"scim_group:{caller.institution_id}/{group.id}", before=before, after=after))  # fmt: skip


def _doc(group: ScimGroup, members: list[str]) -> dict[str, Any]:
    return {
        "id": group.id,
        "displayName": group.display_name,
        "externalId": group.external_id,
        "members": members,
    }


async def _current_members(session: AsyncSession, inst: str, group_id: str) -> list[str]:
    stmt = select(ScimGroupMember.user_id).where(
        col(ScimGroupMember.institution_id) == inst, col(ScimGroupMember.group_id) == group_id
    )
    return sorted((await session.execute(stmt)).scalars())


async def create_group(session: AsyncSession, caller: ScimCaller, data: GroupIn) -> ScimGroup:
    inst = caller.institution_id
    await _check_name(session, inst, data.display_name, None)
    members = data.members or []
    await _check_members(session, inst, members)
    group = ScimGroup(
        institution_id=inst, id=new_id(), display_name=data.display_name, external_id=data.external_id
    )
    session.add(group)
    await session.flush()
    session.add_all(ScimGroupMember(institution_id=inst, group_id=group.id, user_id=u) for u in members)
    _audit(session, caller, "scim.group.create", group, None, _doc(group, sorted(members)))
    await session.flush()
    await reconcile(session, inst, members, caller.actor)
    return group


async def replace_group(session: AsyncSession, caller: ScimCaller, group: ScimGroup, data: GroupIn) -> None:
    inst = caller.institution_id
    await _check_name(session, inst, data.display_name, group.id)
    old = await _current_members(session, inst, group.id)
    new = data.members if data.members is not None else []
    await _check_members(session, inst, [u for u in new if u not in set(old)])
    before = _doc(group, old)
    renamed = group.display_name != data.display_name
    group.display_name, group.external_id = data.display_name, data.external_id
    gone, added = set(old) - set(new), [u for u in new if u not in set(old)]
    if gone:
        await session.execute(
            delete(ScimGroupMember).where(col(ScimGroupMember.institution_id) == inst,
                                          col(ScimGroupMember.group_id) == group.id, col(ScimGroupMember.user_id).in_(gone))
        )  # fmt: skip
    session.add_all(ScimGroupMember(institution_id=inst, group_id=group.id, user_id=u) for u in added)
    after = _doc(group, sorted(new))
    if after != before:
        group.updated_at = utcnow()
        _audit(session, caller, "scim.group.update", group, before, after)
    await session.flush()
    await reconcile(session, inst, set(old) | set(new) if renamed else gone | set(added), caller.actor)


async def delete_group(session: AsyncSession, caller: ScimCaller, group: ScimGroup) -> None:
    inst = caller.institution_id
    members = await _current_members(session, inst, group.id)
    _audit(session, caller, "scim.group.delete", group, _doc(group, members), None)
    await session.delete(group)
    await session.flush()
    await reconcile(session, inst, members, caller.actor)
