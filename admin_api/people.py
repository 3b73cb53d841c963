"""A person's life cycle at the institution: they leave (deprovisioned), come back (reinstated), or ask to be
forgotten (erased). One function each, so every path that does it (the CLI today; SCIM and rosters next)
does it the same way and writes the same audit entry.

Deprovisioning keeps every row: the ledger, rollups and audit log name the person, and amounts must stay
what they were. It stamps `deprovisioned_at`, which every credential check reads: the gateway's key lookup
(within its key cache, at most `EDUAIQ_KEY_CACHE_SECONDS`), the admin API's personal access tokens and
sessions (at once) and SSO sign-in. Erasure (a GDPR or FERPA request) blanks the name and e-mail on the
person and the personal fields (the sign-in's `subject` too) in the audit log's snapshots of them, and keeps
the user id and every amount: ids should be opaque (the README says why). The SSO subject is replaced by a
pseudonym (`erased_subject`) rather than blanked, so the same person signing in again is recognised and
refused instead of created anew; `erased_at` keeps an institution file that still names them from writing
their fields back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from admin_api.context import row_label, snapshot
from core.models import AuditEntry, User
from core.models.access import USER_PERSONAL_FIELDS, erased_subject
from core.time import utcnow

# What identifies a person, as opposed to what they did.
PERSONAL_FIELDS = USER_PERSONAL_FIELDS
# ... and the audit log's other names for them (a sign-in's entry keeps the subject as "subject").
_AUDIT_PERSONAL_KEYS = frozenset(PERSONAL_FIELDS) | {"subject"}


class PersonError(Exception):
    """A refusal an operator reads (unknown person, erasing someone still active)."""


async def _person(session: AsyncSession, institution_id: str, user_id: str) -> User:
    user = await session.get(User, (institution_id, user_id), with_for_update=True)
    if user is None:
        raise PersonError(f"no user {user_id!r} in institution {institution_id!r}")
    return user


def _audit(user: User, action: str, actor: str, before: dict[str, Any] | None) -> AuditEntry:
    return AuditEntry(institution_id=user.institution_id, actor=actor, action=action, target=row_label(user),
                      before=before, after=snapshot(user))  # fmt: skip


async def deprovision(session: AsyncSession, institution_id: str, user_id: str, actor: str) -> bool:
    """The person left: every key, token and session of theirs is refused from now on. False when they
    already were (nothing changes, nothing is audited)."""
    user = await _person(session, institution_id, user_id)
    if user.deprovisioned_at is not None:
        return False
    before = snapshot(user)
    user.deprovisioned_at = utcnow()
    session.add(_audit(user, "user.deprovision", actor, before))
    return True


async def reinstate(session: AsyncSession, institution_id: str, user_id: str, actor: str) -> bool:
    """The person is back (a deprovisioning in error, a returning student): their keys that still exist and
    have not ended work again. False when they were not deprovisioned."""
    user = await _person(session, institution_id, user_id)
    if user.deprovisioned_at is None:
        return False
    if user.erased_at is not None:  # who they were is gone: a returning person is a new user
        raise PersonError(f"{user_id!r} was erased and cannot be reinstated; give them a new user id")
    before = snapshot(user)
    user.deprovisioned_at = None
    session.add(_audit(user, "user.reinstate", actor, before))
    return True


def _blank(doc: Any) -> Any:
    if not isinstance(doc, dict):
        return doc
    return {k: (None if k in _AUDIT_PERSONAL_KEYS and v is not None else v) for k, v in doc.items()}


async def erase(session: AsyncSession, institution_id: str, user_id: str, actor: str) -> int:
    """Blank the person's name and e-mail, pseudonymise their SSO subject (signing in with it again is
    refused), and blank all three in every audit snapshot of them; returns how many audit entries were
    rewritten. Only for someone deprovisioned: erasing an active person would lock them out for good."""
    user = await _person(session, institution_id, user_id)
    if user.deprovisioned_at is None:
        raise PersonError(f"{user_id!r} is still active: deprovision them first (eduaiq user deprovision)")
    if user.sso_subject is not None and not user.sso_subject.startswith("erased:"):
        user.sso_subject = erased_subject(institution_id, user.sso_subject)
    user.email = user.name = None
    if user.erased_at is None:
        user.erased_at = utcnow()
    stmt = select(AuditEntry).where(
        col(AuditEntry.institution_id) == institution_id, col(AuditEntry.target) == row_label(user)
    )
    entries = (await session.execute(stmt)).scalars().all()
    for entry in entries:
        entry.before, entry.after = _blank(entry.before), _blank(entry.after)
    session.add(AuditEntry(institution_id=institution_id, actor=actor, action="user.erase",
                           target=row_label(user), before=None, after={"erased": list(PERSONAL_FIELDS)}))  # fmt: skip
    return len(entries)
