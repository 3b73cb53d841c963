"""Who administers, audits or reads the finances of a unit (admin scopes).

Granting a role over a unit is one of its rules: an admin above the unit does
it (institution admins for the root), so nobody widens their own power or
appoints peers beside themselves.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel
from sqlmodel import select

from admin_api.access import SCOPE_ROLES
from admin_api.context import Ctx, reader, writer
from admin_api.errors import conflict, not_found
from admin_api.ids import UnitId, UserId
from core.models import AdminScope, User

router = APIRouter(tags=["admins"])

ScopeRole = Annotated[
    str, Path(pattern="^(" + "|".join(SCOPE_ROLES) + ")$", description="admin | finance | auditor")
]


class ScopeOut(BaseModel):
    unit_id: str
    user_id: str
    role: str
    source: str
    email: str | None
    name: str | None


async def _scopes(ctx: Ctx, unit_id: str) -> list[ScopeOut]:
    stmt = (
        select(AdminScope, User)
        .join(User, (User.institution_id == AdminScope.institution_id) & (User.id == AdminScope.user_id))  # type: ignore[arg-type]
        .where(AdminScope.institution_id == ctx.institution_id, AdminScope.unit_id == unit_id)
    )
    rows = (await ctx.session.execute(stmt)).all()
    return sorted(
        (ScopeOut(unit_id=s.unit_id, user_id=s.user_id, role=s.role, source=s.source, email=u.email, name=u.name)
         for s, u in rows),
        key=lambda s: (s.role, s.user_id),
    )  # fmt: skip


def _guard(ctx: Ctx, unit_id: str) -> None:
    ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_edit_rules(unit_id), "only an admin above this unit grants roles on it", unit_id
    )


@router.get(
    "/units/{unit_id}/admins", response_model=list[ScopeOut], summary="Admins, finance and auditors of a unit"
)
async def list_admins(unit_id: UnitId, ctx: Ctx = Depends(reader("org:read"))) -> list[ScopeOut]:
    ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_scopes(unit_id), "you may not read this unit's admins", unit_id)
    return await _scopes(ctx, unit_id)


@router.put(
    "/units/{unit_id}/admins/{role}/{user_id}", response_model=ScopeOut, summary="Grant a role over a unit"
)
async def grant(
    unit_id: UnitId, role: ScopeRole, user_id: UserId, ctx: Ctx = Depends(writer("org:write"))
) -> ScopeOut:
    _guard(ctx, unit_id)
    if await ctx.session.get(User, (ctx.institution_id, user_id)) is None:
        raise not_found("user", user_id)
    if await ctx.session.get(AdminScope, (ctx.institution_id, unit_id, user_id, role)) is None:
        row = AdminScope(
            institution_id=ctx.institution_id, unit_id=unit_id, user_id=user_id, role=role, source="api"
        )
        ctx.session.add(row)
        ctx.audit_row("scope.grant", None, row, org=False)
        await ctx.commit()
    return next(s for s in await _scopes(ctx, unit_id) if s.user_id == user_id and s.role == role)


@router.delete(
    "/units/{unit_id}/admins/{role}/{user_id}", status_code=204, summary="Revoke a role over a unit"
)
async def revoke(
    unit_id: UnitId, role: ScopeRole, user_id: UserId, ctx: Ctx = Depends(writer("org:write"))
) -> Response:
    _guard(ctx, unit_id)
    row = await ctx.session.get(AdminScope, (ctx.institution_id, unit_id, user_id, role))
    if row is None:
        raise not_found("admin_scope", f"{role}:{user_id}")
    if role == "admin" and unit_id == ctx.access.tree.root:
        admins = await _scopes(ctx, unit_id)
        if sum(1 for s in admins if s.role == "admin") <= 1:
            raise conflict("last_admin", "the institution would have no admin left", unit=unit_id)
    ctx.audit_row("scope.revoke", row, None, org=False)
    await ctx.session.delete(row)
    await ctx.commit()
    return Response(status_code=204)
