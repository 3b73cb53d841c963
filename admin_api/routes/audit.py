"""The audit log: every change (who, when, what, before and after), filtered to the reader's scope.

An entry belongs to the unit its row names (`unit_id` in its before/after, or
the unit itself), so a department's auditor sees the department's changes and
nothing of its siblings. Entries about the institution as a whole (providers,
models, users, tokens) belong to the root: institution admins and auditors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import String, and_, case, false, func, or_
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from admin_api.context import Ctx, reader
from admin_api.errors import forbidden
from admin_api.ids import SLUG, TEXT
from core.models import AuditEntry

router = APIRouter(tags=["audit"])


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    unit_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    entries: list[AuditOut]
    next_before_id: int | None  # pass as before_id for the next (older) page


def _field(column: Any, name: str) -> ColumnElement[str]:
    return column[name].as_string()


def unit_of_entry() -> ColumnElement[str]:
    after, before = col(AuditEntry.after), col(AuditEntry.before)
    own = func.coalesce(_field(after, "unit_id"), _field(before, "unit_id"))
    itself = func.coalesce(_field(after, "id"), _field(before, "id"))
    is_unit = col(AuditEntry.target).like("unit:%")
    return func.coalesce(own, case((is_unit, itself), else_=None), type_=String)


def _utc(at: datetime) -> datetime:
    """A time without a zone is UTC; the column is timestamptz and compares instants."""
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:  # an offset pushed year 1 or 9999 out of range: the nearest representable instant
        return datetime.min.replace(tzinfo=UTC) if at.year < 5000 else datetime.max.replace(tzinfo=UTC)


@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first")
async def audit_log(
    unit: str | None = Query(default=None, pattern=SLUG, description="this unit and everything below it"),
    actor: str | None = Query(default=None, max_length=128, pattern=TEXT),
    action: str | None = Query(
        default=None, max_length=64, pattern=TEXT, description="prefix, e.g. 'budget.' or 'org.'"
    ),
    target: str | None = Query(
        default=None, max_length=256, pattern=TEXT, description="prefix, e.g. 'unit:stateu/cs101'"
    ),
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = Query(default=None, ge=1, le=2**62),
    limit: int = Query(default=100, ge=1, le=500),
    ctx: Ctx = Depends(reader("audit:read")),
) -> AuditPage:
    access = ctx.access
    tree = access.tree
    if unit is not None:
        access.unit(unit)
        access.require(
            access.can_read_audit(unit), "admins and auditors read the audit log of their units", unit
        )
        tops = [unit]
    else:
        tops = [u for u in access.visible_roots() if access.can_read_audit(u)]
        if not tops:
            raise forbidden("admins and auditors read the audit log of their units")
    units = sorted({u for top in tops for u in tree.subtree(top)})
    where = unit_of_entry()
    scope: ColumnElement[bool] = where.in_(units) if units else false()
    if unit is None and tree.root in tops:
        scope = or_(scope, where.is_(None))
    conditions: list[ColumnElement[bool]] = [col(AuditEntry.institution_id) == ctx.institution_id, scope]
    if actor is not None:
        conditions.append(col(AuditEntry.actor) == actor)
    if action is not None:
        conditions.append(col(AuditEntry.action).startswith(action, autoescape=True))
    if target is not None:
        conditions.append(col(AuditEntry.target).startswith(target, autoescape=True))
    if since is not None:
        conditions.append(col(AuditEntry.at) >= _utc(since))
    if until is not None:
        conditions.append(col(AuditEntry.at) < _utc(until))
    if before_id is not None:
        conditions.append(col(AuditEntry.id) < before_id)
    stmt = (
        select(AuditEntry, where.label("unit_id"))
        .where(and_(*conditions))
        .order_by(col(AuditEntry.id).desc())
        .limit(limit + 1)
    )
    rows = (await ctx.session.execute(stmt)).all()
    entries = [
        AuditOut(
            id=e.id or 0,
            at=e.at,
            actor=e.actor,
            action=e.action,
            target=e.target,
            unit_id=u,
            before=e.before,
            after=e.after,
        )
        for e, u in rows[:limit]
    ]
    return AuditPage(entries=entries, next_before_id=entries[-1].id if len(rows) > limit else None)
