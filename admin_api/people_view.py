"""A unit's people as an admin sees them: where each came from, their memberships with dates, and last use.

Admins asked "why does this person exist, who will remove them, and are they still using it?". The answer
per person is their provenance (`User.source`: file, sso, api, scim, roster; None for rows written before it
was kept), the id their source system knows them by, whether they left (deprovisioned), each membership
with its role, who granted it and when it ends, and the last time they used it, from the ledger.

A person's memberships are shown only in units whose roster the caller may read: an instructor looking at
their course does not learn which other courses a student takes. Last use is per membership (the latest
admission time, `started_at`, of the person's usage events in that unit) and the person's is the latest of
those shown, so it too says nothing about units the caller cannot see. Each (person, unit) is one descent
of `ix_usage_event_person_started` (migration 0005), and a page holds at most `MAX_PAGE` people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import String
from sqlmodel import col, select

from core.models import Membership, User
from core.time import utcnow

MAX_PAGE = 500

_LAST_USE = text(
    """
    select p.user_id, p.unit_id,
           (select max(e.started_at) from usage_event e
             where e.institution_id = :inst and e.user_id = p.user_id and e.unit_id = p.unit_id) as last_used
    from unnest(:users, :units) as p(user_id, unit_id)
    """
).bindparams(bindparam("users", type_=ARRAY(String)), bindparam("units", type_=ARRAY(String)))


@dataclass
class MembershipView:
    unit_id: str
    role: str
    source: str
    ends_at: datetime | None
    ended: bool  # past its end and the operator's grace: its keys are refused
    last_used_at: datetime | None


@dataclass
class PersonView:
    user: User
    memberships: list[MembershipView] = field(default_factory=list)

    @property
    def last_used_at(self) -> datetime | None:
        used = [m.last_used_at for m in self.memberships if m.last_used_at is not None]
        return max(used) if used else None


@dataclass
class PeoplePage:
    people: list[PersonView]
    next_after: str | None  # the cursor of the next page (the last user id of this one), None at the end


async def last_uses(
    session: AsyncSession, institution_id: str, pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], datetime]:
    """(user id, unit id) -> the latest admission time of their usage events there; absent: never used."""
    if not pairs:
        return {}
    rows = await session.execute(
        _LAST_USE,
        {"inst": institution_id, "users": [u for u, _ in pairs], "units": [n for _, n in pairs]},
    )
    return {(r.user_id, r.unit_id): r.last_used for r in rows if r.last_used is not None}


async def people_of(
    session: AsyncSession,
    institution_id: str,
    unit_id: str,
    *,
    visible: Callable[[str], bool],
    grace_seconds: float,
    after: str | None,
    limit: int,
) -> PeoplePage:
    """The members of `unit_id` in user-id order after `after`, at most `limit` (≤ MAX_PAGE) of them."""
    limit = max(1, min(limit, MAX_PAGE))
    ids_stmt = (
        select(Membership.user_id)
        .where(Membership.institution_id == institution_id, Membership.unit_id == unit_id)
        .order_by(col(Membership.user_id))
        .limit(limit + 1)
    )
    if after is not None:
        ids_stmt = ids_stmt.where(col(Membership.user_id) > after)
    ids = list((await session.execute(ids_stmt)).scalars())
    more = len(ids) > limit
    ids = ids[:limit]
    if not ids:
        return PeoplePage([], None)
    users_stmt = select(User).where(User.institution_id == institution_id, col(User.id).in_(ids))
    users = {u.id: u for u in (await session.execute(users_stmt)).scalars()}
    members_stmt = (
        select(Membership)
        .where(Membership.institution_id == institution_id, col(Membership.user_id).in_(ids))
        .order_by(col(Membership.unit_id))
    )
    shown = [m for m in (await session.execute(members_stmt)).scalars() if visible(m.unit_id)]
    used = await last_uses(session, institution_id, [(m.user_id, m.unit_id) for m in shown])
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    people = {uid: PersonView(users[uid]) for uid in ids}
    for m in shown:
        people[m.user_id].memberships.append(
            MembershipView(unit_id=m.unit_id, role=m.role, source=m.source, ends_at=m.ends_at,
                           ended=m.ends_at is not None and m.ends_at <= cutoff,
                           last_used_at=used.get((m.user_id, m.unit_id)))
        )  # fmt: skip
    return PeoplePage([people[uid] for uid in ids], ids[-1] if more else None)
