"""What the database holds that an import compares against, read in bulk under the institution's lock.

One asyncpg connection (the session's own, so reads and writes share its transaction): an import of tens of
thousands of rows reads them as plain tuples, not ORM objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.orgfile.schema import Roster


async def raw_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session's transaction (COPY and array parameters need it)."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return cast(asyncpg.Connection, raw.driver_connection)


@dataclass(frozen=True)
class UnitRow:
    parent_id: str | None
    name: str | None
    archived: bool
    source: str | None


@dataclass(frozen=True)
class UserRow:
    id: str
    email: str | None
    name: str | None
    sso_subject: str | None
    source: str | None
    external_id: str | None
    erased: bool


@dataclass
class Current:
    institution_id: str
    timezone: str
    roster: Roster
    records: dict[str, dict[str, tuple[str | None, dict[str, Any]]]] = field(default_factory=dict)
    units: dict[str, UnitRow] = field(default_factory=dict)
    users: dict[str, UserRow] = field(default_factory=dict)
    # (unit, user) -> (role, ends_at, source), every membership of the institution
    memberships: dict[tuple[str, str], tuple[str, datetime | None, str]] = field(default_factory=dict)


def _json(value: Any) -> Any:
    """A json column's value: SQLAlchemy's asyncpg dialect installs a decoder on its connections."""
    return json.loads(value) if isinstance(value, str | bytes) else value


class UnknownInstitution(LookupError):
    pass


async def load_current(session: AsyncSession, institution_id: str) -> Current:
    """Takes the institution's row lock first, as the admin API's writers and `org import` do, so one roster
    import at a time is applied and no edit interleaves with it."""
    db = await raw_connection(session)
    inst = await db.fetchrow("select timezone from institution where id = $1 for update", institution_id)
    if inst is None:
        raise UnknownInstitution(f"no institution {institution_id!r}: import its institution file first")
    config = await db.fetchval("select config from roster_settings where institution_id = $1", institution_id)
    roster = Roster.model_validate(_json(config)) if config else Roster()
    cur = Current(institution_id, inst["timezone"], roster)
    for kind, sid, target, data in await db.fetch(
        "select kind, sourced_id, target, data from roster_record where institution_id = $1", institution_id
    ):
        cur.records.setdefault(kind, {})[sid] = (target, _json(data))
    for uid, parent, name, archived, source in await db.fetch(
        "select id, parent_id, name, archived, source from unit where institution_id = $1", institution_id
    ):
        cur.units[uid] = UnitRow(parent, name, archived, source)
    for r in await db.fetch(
        "select id, email, name, sso_subject, source, external_id, erased_at is not null as erased "
        "from app_user where institution_id = $1",
        institution_id,
    ):
        cur.users[r["id"]] = UserRow(r["id"], r["email"], r["name"], r["sso_subject"], r["source"],
                                     r["external_id"], r["erased"])  # fmt: skip
    for unit, user, role, ends_at, source in await db.fetch(
        "select unit_id, user_id, role, ends_at, source from membership where institution_id = $1",
        institution_id,
    ):
        cur.memberships[(unit, user)] = (role, ends_at, source)
    return cur
