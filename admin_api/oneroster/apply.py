"""Write a plan in a handful of statements: COPY for new rows, one UPDATE over arrays for changed ones.

An import of 20,000 people and 60,000 enrollments is a few round trips, not 80,000 ORM objects (the
benchmark, bench/oneroster.py, holds it to well under a minute). The session's transaction is the caller's:
nothing is visible until it commits, and a failure anywhere writes nothing.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.oneroster.plan import SOURCE, Plan
from admin_api.oneroster.state import raw_connection
from core.time import utcnow


async def apply_plan(session: AsyncSession, institution_id: str, plan: Plan, now: datetime) -> None:
    db = await raw_connection(session)
    inst = institution_id
    if plan.new_units:
        await db.copy_records_to_table(
            "unit",
            columns=["institution_id", "id", "parent_id", "kind", "name", "archived", "position", "source"],
            records=[
                (inst, uid, parent, "course", name, False, 0, SOURCE) for uid, parent, name in plan.new_units
            ],
        )
    if plan.new_users:
        created = utcnow()
        await db.copy_records_to_table(
            "app_user",
            columns=["institution_id", "id", "email", "name", "sso_subject", "created_at", "source", "external_id"],
            records=[(inst, uid, email, name, subject, created, SOURCE, sid)
                     for uid, email, name, subject, sid in plan.new_users],
        )  # fmt: skip
    if plan.changed_users:
        ids, emails, names = zip(*plan.changed_users, strict=True)
        await db.execute(
            "update app_user u set email = d.email, name = d.name "
            "from unnest($2::text[], $3::text[], $4::text[]) as d(id, email, name) "
            "where u.institution_id = $1 and u.id = d.id",
            inst, list(ids), list(emails), list(names),
        )  # fmt: skip
    if plan.changed_units:
        ids, parents, names, archived = zip(*plan.changed_units, strict=True)
        await db.execute(
            "update unit u set parent_id = d.parent, name = d.name, archived = d.archived "
            "from unnest($2::text[], $3::text[], $4::text[], $5::bool[]) as d(id, parent, name, archived) "
            "where u.institution_id = $1 and u.id = d.id and u.source = 'roster'",
            inst, list(ids), list(parents), list(names), list(archived),
        )  # fmt: skip
    if plan.new_members:
        await db.copy_records_to_table(
            "membership",
            columns=["institution_id", "unit_id", "user_id", "role", "source", "ends_at"],
            records=[(inst, unit, user, role, SOURCE, ends) for unit, user, role, ends in plan.new_members],
        )
    if plan.changed_members:
        units, users, roles, ends = zip(*plan.changed_members, strict=True)
        await db.execute(
            "update membership m set role = d.role, ends_at = d.ends "
            "from unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[]) as d(unit, usr, role, ends) "
            "where m.institution_id = $1 and m.unit_id = d.unit and m.user_id = d.usr and m.source = 'roster'",
            inst, list(units), list(users), list(roles), list(ends),
        )  # fmt: skip
    if plan.ended_members:
        units, users = zip(*plan.ended_members, strict=True)
        await db.execute(
            "update membership m set ends_at = $4 from unnest($2::text[], $3::text[]) as d(unit, usr) "
            "where m.institution_id = $1 and m.unit_id = d.unit and m.user_id = d.usr and m.source = 'roster'",
            inst, list(units), list(users), now,
        )  # fmt: skip
    rewritten = [(kind, sid) for kind, sid, _, _ in plan.records] + plan.dropped_records
    if rewritten:
        kinds, sids = zip(*rewritten, strict=True)
        await db.execute(
            "delete from roster_record r using unnest($2::text[], $3::text[]) as d(kind, sid) "
            "where r.institution_id = $1 and r.kind = d.kind and r.sourced_id = d.sid",
            inst, list(kinds), list(sids),
        )  # fmt: skip
    if plan.records:
        await db.copy_records_to_table(
            "roster_record",
            columns=["institution_id", "kind", "sourced_id", "target", "data"],
            records=[(inst, kind, sid, target, json.dumps(data, separators=(",", ":")))
                     for kind, sid, target, data in plan.records],
        )  # fmt: skip
