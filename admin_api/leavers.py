"""Keys that still worked after their person left: the leavers view, whose right answer is "none".

The gateway refuses a key once its membership has ended (`ends_at` plus the operator's grace,
EDUAIQ_MEMBERSHIP_GRACE_SECONDS) or its person was deprovisioned (`app_user.deprovisioned_at`). This view
checks that promise against the financial truth: every usage event of such a key admitted after that moment.
A row here means a key was accepted when it should not have been (a gateway with a stale cache or an old
version, a membership's end written straight into the database, a bug), and its cost is money the
institution paid for access it had ended.

What "admitted" means in the ledger: an event's `started_at` is the gateway's wall clock when it built the
request's outcome, right after the key was accepted (`gateway.endpoints._outcome`); `ended_at` is when the
answer finished, which for a long stream can be minutes later and says nothing about whether the key was
still good. So the comparison is on `started_at`. Every event names its key (`key_id`), person and unit, and
only requests whose key was accepted produce an event (a refused key has no principal, hence no event).

Tolerance: each gateway caches a key's answer for at most EDUAIQ_KEY_CACHE_SECONDS (≤ 5 s), and that
cache is what a deprovisioning or an edited end reaches the gateway through; the README promises a stop
within it. So an event counts only when admitted more than that long after the stop: `started_at >
least(ends_at + grace, deprovisioned_at) + key_cache_seconds`. The admin API's settings supply both numbers;
the gateways are assumed to run with the same ones (they do when deployed from one chart).

The comparison is with the current state: a membership whose end was later moved out, or a person later
reinstated, no longer flags what happened in between (the audit log has those edits). Each candidate key
costs one descent of `ix_usage_event_person_started` (migration 0005); the answer is ordered by the latest
such event and cut at `limit`, with `truncated` saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import String

MAX_LIMIT = 1000

_LEAVERS = text(
    """
    with candidates as (
        select k.id as key_id, k.prefix as key_prefix, k.user_id, k.unit_id, k.revoked_at,
               m.ends_at, p.deprovisioned_at, p.name,
               least(m.ends_at + make_interval(secs => :grace), p.deprovisioned_at) as stopped_at
        from api_key k
        join membership m
          on m.institution_id = k.institution_id and m.unit_id = k.unit_id and m.user_id = k.user_id
        join app_user p on p.institution_id = k.institution_id and p.id = k.user_id
        where k.institution_id = :inst and k.unit_id = any(:units)
          and (m.ends_at is not null or p.deprovisioned_at is not null)
    )
    select c.*, s.first_at, s.last_at, s.events, s.cost_micro
    from candidates c
    cross join lateral (
        select min(e.started_at) as first_at, max(e.started_at) as last_at, count(*) as events,
               coalesce(sum(e.cost_micro), 0) as cost_micro
        from usage_event e
        where e.institution_id = :inst and e.user_id = c.user_id and e.unit_id = c.unit_id
          and e.started_at > c.stopped_at + make_interval(secs => :tolerance)
          and e.key_id = c.key_id
    ) s
    where c.stopped_at is not null and s.events > 0
    order by s.last_at desc, c.key_id
    limit :limit
    """
).bindparams(bindparam("units", type_=ARRAY(String)))


@dataclass
class Leaver:
    key_id: str
    key_prefix: str
    user_id: str
    name: str | None
    unit_id: str
    ends_at: datetime | None  # the membership's end
    deprovisioned_at: datetime | None  # when the person was deprovisioned
    stopped_at: datetime  # when the key should have stopped: the earlier of end + grace and deprovisioning
    key_revoked_at: datetime | None
    first_event_at: datetime  # the first and last admission after the stop (plus the tolerance)
    last_event_at: datetime
    events: int
    cost_micro: int


@dataclass
class LeaversReport:
    leavers: list[Leaver]
    truncated: bool


async def leavers(
    session: AsyncSession,
    institution_id: str,
    unit_ids: list[str],
    *,
    grace_seconds: float,
    tolerance_seconds: float,
    limit: int,
) -> LeaversReport:
    """Keys of memberships in `unit_ids` used after their stop; most recent first, at most `limit`."""
    limit = max(1, min(limit, MAX_LIMIT))
    if not unit_ids:
        return LeaversReport([], False)
    params = {"inst": institution_id, "units": unit_ids, "grace": float(grace_seconds),
              "tolerance": float(tolerance_seconds), "limit": limit + 1}  # fmt: skip
    rows = (await session.execute(_LEAVERS, params)).all()
    found = [
        Leaver(key_id=r.key_id, key_prefix=r.key_prefix, user_id=r.user_id, name=r.name, unit_id=r.unit_id,
               ends_at=r.ends_at, deprovisioned_at=r.deprovisioned_at, stopped_at=r.stopped_at,
               key_revoked_at=r.revoked_at, first_event_at=r.first_at, last_event_at=r.last_at,
               events=int(r.events), cost_micro=int(r.cost_micro))
        for r in rows[:limit]
    ]  # fmt: skip
    return LeaversReport(found, len(rows) > limit)
