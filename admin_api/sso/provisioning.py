"""Make the database agree with what the IdP just asserted, for this one person.

Rules, so the institution file and the admin API stay the authorities for what
they granted:
- the user is found by (institution, sso_subject) and created on first sign-in
  (unless the institution turned that off), with `source = "sso"`; name and
  e-mail follow the IdP, but a person another path created keeps that source
  (first source wins);
- memberships and admin scopes the IdP asserts are added for units that exist
  and are not archived, with `source = "sso"`;
- a row from the file or the API (`source` "file" / "api") is never changed or
  removed here, even when the IdP asserts another role for that unit;
- an `sso` row the IdP no longer asserts is removed (a student who dropped the
  course), except in archived units, whose membership lists are history.
Every change is written to the audit log, attributed to `sso:<method>`.
One transaction per sign-in, serialized per person by an advisory lock so two
simultaneous first sign-ins cannot create two users.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from admin_api.sso.errors import SSOError
from admin_api.sso.mapping import Identity
from core.models import AdminScope, AuditEntry, Institution, Membership, Unit, User
from core.models.access import erased_subject
from core.time import utcnow

SOURCE = "sso"


@dataclass
class Provisioned:
    user_id: str
    created: bool
    memberships: dict[str, str] = field(default_factory=dict)  # every membership now held: unit -> role
    admin_scopes: set[tuple[str, str]] = field(default_factory=set)
    changes: list[str] = field(default_factory=list)


def _lock_key(institution_id: str, subject: str) -> int:
    digest = hashlib.sha256(f"eduaiq-sso\0{institution_id}\0{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _label(table: str, *pk: str) -> str:
    return f"{table}:{'/'.join(pk)}"  # same target format as the institution-file import


async def _user_id_for(session: AsyncSession, institution_id: str, subject: str) -> str:
    """The subject itself when free (readable in exports), else the subject with a stable suffix."""
    base = subject[:128]
    suffix = "-" + hashlib.sha256(subject.encode()).hexdigest()[:10]
    for candidate in (base, subject[: 128 - len(suffix)] + suffix):
        taken = await session.get(User, (institution_id, candidate))
        if taken is None:
            return candidate
    raise SSOError(409, "user_id_conflict", "no free user id for this subject", {"subject": subject})


async def provision(
    session: AsyncSession, institution_id: str, identity: Identity, *, method: str, create_users: bool
) -> Provisioned:
    """Apply `identity` inside the caller's transaction; raises `SSOError` (4xx) when refused."""
    if await session.get(Institution, institution_id) is None:
        raise SSOError(404, "institution_unknown", "this institution has not been imported",
                       {"institution": institution_id})  # fmt: skip
    await session.execute(
        text("select pg_advisory_xact_lock(:k)"), {"k": _lock_key(institution_id, identity.subject)}
    )
    actor = f"sso:{method}"
    audit: list[AuditEntry] = []
    changes: list[str] = []

    def record(action: str, target: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        changes.append(f"{action} {target}")
        audit.append(AuditEntry(institution_id=institution_id, actor=actor, action=action, target=target,
                                before=before, after=after))  # fmt: skip

    user = (
        await session.execute(
            select(User).where(User.institution_id == institution_id, User.sso_subject == identity.subject)
        )
    ).scalar_one_or_none()
    created = False
    if user is None:
        # An erased person's subject is a pseudonym of it: they left and asked to be forgotten, so signing in
        # again is refused rather than taken for a newcomer.
        pseudonym = erased_subject(institution_id, identity.subject)
        erased = await session.execute(
            select(User.id).where(User.institution_id == institution_id, User.sso_subject == pseudonym)
        )
        if erased.first() is not None:
            raise SSOError(403, "user_deprovisioned", "this account no longer has access at this institution",
                           {"subject": identity.subject})  # fmt: skip
        if not create_users:
            raise SSOError(403, "user_not_provisioned", "this institution only admits users it has imported",
                           {"subject": identity.subject})  # fmt: skip
        user_id = await _user_id_for(session, institution_id, identity.subject)
        user = User(institution_id=institution_id, id=user_id, email=identity.email, name=identity.name,
                    sso_subject=identity.subject, source=SOURCE)  # fmt: skip
        session.add(user)
        await session.flush()
        created = True
        record(
            "sso.user.create", _label("app_user", institution_id, user_id), None, user.model_dump(mode="json")
        )
    else:
        if user.deprovisioned_at is not None:  # they left: signing in again gives them nothing back
            raise SSOError(403, "user_deprovisioned", "this account no longer has access at this institution",
                           {"subject": identity.subject})  # fmt: skip
        before = user.model_dump(mode="json")
        if identity.email and identity.email != user.email:
            user.email = identity.email
        if identity.name and identity.name != user.name:
            user.name = identity.name
        after = user.model_dump(mode="json")
        if after != before:
            record("sso.user.update", _label("app_user", institution_id, user.id), before, after)

    current = {
        m.unit_id: m
        for m in (
            await session.execute(
                select(Membership).where(
                    Membership.institution_id == institution_id, Membership.user_id == user.id
                )
            )
        ).scalars()
    }
    scopes = {
        (s.unit_id, s.role): s
        for s in (
            await session.execute(
                select(AdminScope).where(
                    AdminScope.institution_id == institution_id, AdminScope.user_id == user.id
                )
            )
        ).scalars()
    }
    involved = set(identity.memberships) | {u for u, _ in identity.admin_scopes} | set(current)
    involved |= {u for u, _ in scopes}
    units: dict[str, bool] = {}
    if involved:
        rows = await session.execute(
            select(Unit.id, Unit.archived).where(
                Unit.institution_id == institution_id, col(Unit.id).in_(involved)
            )
        )
        units = {uid: bool(is_archived) for uid, is_archived in rows.all()}
    live = {u for u, is_archived in units.items() if not is_archived}
    archived = {u for u, is_archived in units.items() if is_archived}

    desired = {u: r for u, r in identity.memberships.items() if u in live}
    for unit_id, role in sorted(desired.items()):
        row = current.get(unit_id)
        target = _label("membership", institution_id, unit_id, user.id)
        if row is None:
            row = Membership(institution_id=institution_id, unit_id=unit_id, user_id=user.id, role=role,
                             source=SOURCE)  # fmt: skip
            session.add(row)
            current[unit_id] = row
            record("sso.membership.create", target, None, row.model_dump(mode="json"))
        elif row.source == SOURCE and row.role != role:
            before = row.model_dump(mode="json")
            row.role = role
            record("sso.membership.update", target, before, row.model_dump(mode="json"))
    for unit_id, row in sorted(current.items()):
        if row.source == SOURCE and unit_id not in desired and unit_id not in archived:
            record("sso.membership.remove", _label("membership", institution_id, unit_id, user.id),
                   row.model_dump(mode="json"), None)  # fmt: skip
            await session.delete(row)
            del current[unit_id]

    desired_scopes = {(u, r) for u, r in identity.admin_scopes if u in live}
    for unit_id, role in sorted(desired_scopes - set(scopes)):
        scope = AdminScope(
            institution_id=institution_id, unit_id=unit_id, user_id=user.id, role=role, source=SOURCE
        )
        session.add(scope)
        scopes[(unit_id, role)] = scope
        record("sso.admin_scope.create", _label("admin_scope", institution_id, unit_id, user.id, role), None,
               scope.model_dump(mode="json"))  # fmt: skip
    for key, scope in sorted(scopes.items()):
        if scope.source == SOURCE and key not in desired_scopes and key[0] not in archived:
            record("sso.admin_scope.remove", _label("admin_scope", institution_id, key[0], user.id, key[1]),
                   scope.model_dump(mode="json"), None)  # fmt: skip
            await session.delete(scope)
            del scopes[key]

    session.add_all(audit)
    await session.flush()
    return Provisioned(
        user_id=user.id,
        created=created,
        memberships={u: m.role for u, m in current.items()},
        admin_scopes=set(scopes),
        changes=changes,
    )


async def user_grants(
    session: AsyncSession, institution_id: str, user_id: str, grace_seconds: float = 0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """What `/auth/session` shows: the person's memberships and admin scopes as they are now (a membership
    past its end and the operator's grace, EDUAIQ_MEMBERSHIP_GRACE_SECONDS, is no longer held)."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    members = await session.execute(
        select(Membership.unit_id, Membership.role, Membership.source)
        .where(
            Membership.institution_id == institution_id,
            Membership.user_id == user_id,
            or_(col(Membership.ends_at).is_(None), col(Membership.ends_at) > cutoff),
        )
        .order_by(Membership.unit_id)
    )
    scopes = await session.execute(
        select(AdminScope.unit_id, AdminScope.role, AdminScope.source)
        .where(AdminScope.institution_id == institution_id, AdminScope.user_id == user_id)
        .order_by(AdminScope.unit_id, AdminScope.role)
    )
    return (
        [{"unit_id": u, "role": r, "source": s} for u, r, s in members.all()],
        [{"unit_id": u, "role": r, "source": s} for u, r, s in scopes.all()],
    )


async def find_user(session: AsyncSession, institution_id: str, user_id: str) -> User | None:
    return await session.get(User, (institution_id, user_id))


async def only_institution(session: AsyncSession) -> str | None:
    """The dev login's default institution: the one there is, if there is exactly one."""
    count = (await session.execute(select(func.count()).select_from(Institution))).scalar_one()
    if count != 1:
        return None
    return (await session.execute(select(Institution.id))).scalar_one()
