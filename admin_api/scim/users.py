"""SCIM Users: create, replace and delete people, deprovisioning and reinstating them through
`admin_api.people` (the one owner of that), and the group memberships a deletion ends.

userName is the SSO subject: sign-in finds a person by (institution, sso_subject), so someone provisioned
here signs in later as the same user. The user id is chosen as SSO's first sign-in chooses it
(`admin_api.sso.provisioning._user_id_for`: the subject itself when free). userName is unique per
institution without regard to case; an existing person (from the file, SSO or the API) with that userName
is the one an IdP finds with `filter=userName eq "..."`, and is refused as a duplicate on POST.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from admin_api.context import snapshot
from admin_api.people import PersonError, deprovision, reinstate
from admin_api.scim.errors import ScimError, invalid_value, not_found, uniqueness
from admin_api.scim.reconcile import reconcile
from admin_api.scim.resources import UserIn, user_name_of
from admin_api.scim.tokens import ScimCaller
from admin_api.sso.errors import SSOError
from admin_api.sso.provisioning import _user_id_for
from core.models import AuditEntry, ScimGroup, ScimGroupMember, ScimUser, User
from core.time import utcnow


async def load_user(
    session: AsyncSession, inst: str, user_id: str, *, lock: bool = False
) -> tuple[User, ScimUser | None]:
    """The person behind a SCIM id, or 404: another institution's person, or one a SCIM DELETE removed, is
    not found (the token's institution bounds every lookup)."""
    user = await session.get(User, (inst, user_id), with_for_update=lock) if len(user_id) <= 128 else None
    if user is None:
        raise not_found("User", user_id)
    row = await session.get(ScimUser, (inst, user_id), with_for_update=lock)
    if row is not None and row.deleted_at is not None:
        raise not_found("User", user_id)
    return user, row


async def groups_of(session: AsyncSession, inst: str, user_ids: list[str]) -> dict[str, list[ScimGroup]]:
    out: dict[str, list[ScimGroup]] = {u: [] for u in user_ids}
    if not user_ids:
        return out
    rows = await session.execute(
        select(ScimGroupMember.user_id, ScimGroup)
        .join(
            ScimGroup,
            (col(ScimGroup.institution_id) == col(ScimGroupMember.institution_id))
            & (col(ScimGroup.id) == col(ScimGroupMember.group_id)),
        )
        .where(col(ScimGroupMember.institution_id) == inst, col(ScimGroupMember.user_id).in_(user_ids))
        .order_by(col(ScimGroup.display_name))
    )
    for uid, group in rows.all():
        out[uid].append(group)
    return out


async def _by_user_name(session: AsyncSession, inst: str, user_name: str) -> User | None:
    stmt = select(User).where(
        col(User.institution_id) == inst,
        func.lower(func.coalesce(col(User.sso_subject), col(User.id))) == user_name.lower(),
    )
    return (await session.execute(stmt)).scalars().first()


def _audit(session: AsyncSession, caller: ScimCaller, action: str, target: str,
           before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:  # fmt: skip
    session.add(AuditEntry(institution_id=caller.institution_id, actor=caller.actor, action=action,
                           target=target, before=before, after=after))  # fmt: skip


async def _set_active(session: AsyncSession, caller: ScimCaller, user: User, active: bool | None) -> None:
    if active is None:
        return
    try:
        if active:
            await reinstate(session, caller.institution_id, user.id, caller.actor)
        else:
            await deprovision(session, caller.institution_id, user.id, caller.actor)
    except PersonError as exc:
        raise invalid_value(str(exc)) from None


async def create_user(session: AsyncSession, caller: ScimCaller, data: UserIn) -> User:
    inst = caller.institution_id
    existing = await _by_user_name(session, inst, data.user_name)
    if existing is not None:
        row = await session.get(ScimUser, (inst, existing.id), with_for_update=True)
        if row is None or row.deleted_at is None or existing.erased_at is not None:
            raise uniqueness(f"userName {data.user_name!r} is already taken")
        # A person SCIM deleted comes back: the same user (their ledger rows name it), reinstated.
        row.deleted_at = None
        await replace_user(session, caller, existing, row, data)
        return existing
    try:
        user_id = await _user_id_for(session, inst, data.user_name)
    except SSOError:
        raise uniqueness(f"no free user id for userName {data.user_name!r}") from None
    user = User(institution_id=inst, id=user_id, email=data.email, name=data.name, sso_subject=data.user_name,
                source="scim", external_id=data.external_id)  # fmt: skip
    session.add(user)
    await session.flush()
    session.add(ScimUser(institution_id=inst, user_id=user_id, attributes=data.attributes))
    _audit(session, caller, "scim.user.create", f"app_user:{inst}/{user_id}", None, snapshot(user))
    await session.flush()
    await _set_active(session, caller, user, False if data.active is False else None)
    return user


async def replace_user(
    session: AsyncSession, caller: ScimCaller, user: User, row: ScimUser | None, data: UserIn
) -> None:
    inst = caller.institution_id
    if user.erased_at is not None:
        raise ScimError(
            400, "this person was erased; provision a returning person as a new user", "mutability"
        )
    if data.user_name.lower() != user_name_of(user).lower():
        other = await _by_user_name(session, inst, data.user_name)
        if other is not None and other.id != user.id:
            raise uniqueness(f"userName {data.user_name!r} is already taken")
    before = snapshot(user)
    if data.user_name != user_name_of(user):
        user.sso_subject = data.user_name
    user.external_id, user.name, user.email = data.external_id, data.name, data.email
    if row is None:
        row = ScimUser(institution_id=inst, user_id=user.id, attributes=data.attributes)
        session.add(row)
    else:
        row.attributes = data.attributes
    row.updated_at = utcnow()
    after = snapshot(user)
    if after != before:
        _audit(session, caller, "scim.user.update", f"app_user:{inst}/{user.id}", before, after)
    await session.flush()
    # Replace semantics (RFC 7644 §3.5.1): a PUT or PATCH result without `active` is the default, active.
    await _set_active(session, caller, user, data.active if data.active is not None else True)


async def delete_user(session: AsyncSession, caller: ScimCaller, user: User, row: ScimUser | None) -> None:
    """Deprovision, leave every SCIM group (their memberships end at once) and answer 404 from now on; the
    user row stays (the ledger and the audit log name it)."""
    inst = caller.institution_id
    await _set_active(session, caller, user, False)
    if row is None:
        row = ScimUser(institution_id=inst, user_id=user.id, attributes={})
        session.add(row)
    row.deleted_at = row.updated_at = utcnow()
    await session.execute(
        delete(ScimGroupMember).where(
            col(ScimGroupMember.institution_id) == inst, col(ScimGroupMember.user_id) == user.id
        )
    )
    _audit(session, caller, "scim.user.delete", f"app_user:{inst}/{user.id}", snapshot(user), None)
    await session.flush()
    await reconcile(session, inst, [user.id], caller.actor)
