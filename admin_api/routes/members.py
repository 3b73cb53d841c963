"""Member rosters of a unit: list, add or change one, remove one, import a CSV."""

from __future__ import annotations

from datetime import datetime
from types import EllipsisType

from fastapi import APIRouter, Depends, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlmodel import col, select

from admin_api.context import Ctx, reader, writer
from admin_api.errors import ApiError, conflict, not_found
from admin_api.ids import UnitId, UserId
from admin_api.roster import (
    ROLE_PATTERN,
    Profile,
    ensure_users,
    members_of,
    parse_roster_csv,
    remove,
    require_instructor_reach,
    set_role,
)
from core.models import Membership, User

router = APIRouter(tags=["members"])


class MemberOut(BaseModel):
    user_id: str
    role: str
    source: str  # file | sso | api: who granted it (an org import only removes its own)
    email: str | None
    name: str | None
    ends_at: AwareDatetime | None = Field(description="when the membership ends: its keys stop working then")
    deprovisioned: bool = Field(
        description="the person left: every key, token and session of theirs is refused"
    )


class MemberPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(pattern=ROLE_PATTERN)
    profile: Profile | None = Field(default=None, description="creates the user when they do not exist yet")
    ends_at: AwareDatetime | None = Field(
        default=None,
        description="when the membership ends (a term's end, with its time zone): the keys issued for it stop "
        "working then, after the operator's grace (EDUAIQ_MEMBERSHIP_GRACE_SECONDS); null: no end; omitted: "
        "as it is. Only an admin of the unit sets or clears it, and not on a membership from the institution "
        "file (its `until:` is the end)",
    )


class ImportOut(BaseModel):
    added: list[str]
    changed: list[str]
    unchanged: list[str]
    removed: list[str]
    users_created: list[str]


async def _users(ctx: Ctx, ids: list[str]) -> dict[str, User]:
    stmt = select(User).where(User.institution_id == ctx.institution_id, col(User.id).in_(ids))
    return {u.id: u for u in (await ctx.session.execute(stmt)).scalars().all()}


async def _listing(ctx: Ctx, unit_id: str) -> list[MemberOut]:
    members = await members_of(ctx, unit_id)
    users = await _users(ctx, list(members))
    return [
        MemberOut(
            user_id=m.user_id,
            role=m.role,
            source=m.source,
            email=users[m.user_id].email,
            name=users[m.user_id].name,
            ends_at=m.ends_at,
            deprovisioned=users[m.user_id].deprovisioned_at is not None,
        )
        for m in sorted(members.values(), key=lambda m: m.user_id)
    ]


def _writable(ctx: Ctx, unit_id: str, roles: set[str]) -> None:
    unit = ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_edit_roster(unit_id, roles),
        "admins manage rosters; instructors may add and remove students and TAs",
        unit_id,
    )
    if unit.archived:
        raise conflict("unit_archived", f"unit {unit_id!r} is archived: its roster is history", unit=unit_id)


def _ends_at_change(
    ctx: Ctx, unit_id: str, body: MemberPut, current: Membership | None
) -> datetime | EllipsisType | None:
    """The end to write (`...`: leave it). An end is a decision about a person's access, so only an admin of
    the unit makes it: an instructor cannot clear or extend the end an admin set. A membership from the
    institution file takes its end from the file's `until:` (the next import would undo an edit here)."""
    if "ends_at" not in body.model_fields_set:
        return ...
    if body.ends_at == (current.ends_at if current else None):
        return body.ends_at  # as it is: nothing decided
    if current is not None and current.source == "file":
        raise conflict("membership_from_file", f"{current.user_id!r}'s membership of {unit_id!r} comes from the "
                       "institution file: set its end there (the member's 'until:', the last day)",
                       unit=unit_id, user=current.user_id)  # fmt: skip
    ctx.access.require(
        ctx.access.scope_covers(("admin",), unit_id),
        "only an admin of the unit sets or clears a membership's end",
        unit_id,
    )
    return body.ends_at


@router.get("/units/{unit_id}/members", response_model=list[MemberOut], summary="A unit's roster")
async def list_members(unit_id: UnitId, ctx: Ctx = Depends(reader("org:read"))) -> list[MemberOut]:
    ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_roster(unit_id), "you may not read this roster", unit_id)
    return await _listing(ctx, unit_id)


@router.put(
    "/units/{unit_id}/members/{user_id}", response_model=MemberOut, summary="Add a member or change a role"
)
async def put_member(
    unit_id: UnitId, user_id: UserId, body: MemberPut, ctx: Ctx = Depends(writer("org:write"))
) -> MemberOut:
    _writable(ctx, unit_id, set())
    current = (await members_of(ctx, unit_id)).get(user_id)
    _writable(ctx, unit_id, {body.role} | ({current.role} if current else set()))
    await require_instructor_reach(ctx, unit_id, [user_id])
    if await ctx.session.get(User, (ctx.institution_id, user_id)) is None:
        if body.profile is None:
            raise not_found("user", user_id)
        await ensure_users(ctx, unit_id, {user_id: body.profile})
    ends_at = _ends_at_change(ctx, unit_id, body, current)
    await set_role(ctx, unit_id, user_id, body.role, current, ends_at)
    await ctx.commit()
    return next(m for m in await _listing(ctx, unit_id) if m.user_id == user_id)


@router.delete(
    "/units/{unit_id}/members/{user_id}", status_code=204, summary="Remove a member (and their keys)"
)
async def delete_member(
    unit_id: UnitId, user_id: UserId, ctx: Ctx = Depends(writer("org:write"))
) -> Response:
    _writable(ctx, unit_id, set())
    current = (await members_of(ctx, unit_id)).get(user_id)
    _writable(ctx, unit_id, {current.role} if current else set())
    if current is None:
        raise not_found("member", user_id)
    await remove(ctx, current)
    await ctx.commit()
    return Response(status_code=204)


@router.post(
    "/units/{unit_id}/members/import",
    response_model=ImportOut,
    summary="Import a roster from CSV (columns: user, role, email, name, sso_subject)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def import_members(
    unit_id: UnitId, request: Request, replace: bool = False, ctx: Ctx = Depends(writer("org:write"))
) -> ImportOut:
    """`replace=true` also removes members the file does not list (of the roles the caller manages)."""
    _writable(ctx, unit_id, set())
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("text/csv", "text/plain", "application/csv"):
        raise ApiError(415, "unsupported_media_type", "send the roster as text/csv")
    rows = parse_roster_csv(await request.body())
    current = await members_of(ctx, unit_id)
    listed = {r.user_id for r in rows}
    dropped = [
        m
        for uid, m in current.items()
        if replace and uid not in listed and ctx.access.can_edit_roster(unit_id, {m.role})
    ]
    roles = {r.role for r in rows} | {current[r.user_id].role for r in rows if r.user_id in current}
    _writable(ctx, unit_id, roles | {m.role for m in dropped})
    await require_instructor_reach(ctx, unit_id, sorted(listed))
    result = ImportOut(added=[], changed=[], unchanged=[], removed=[], users_created=[])
    result.users_created = await ensure_users(ctx, unit_id, {r.user_id: r.profile for r in rows})
    for r in rows:
        outcome = await set_role(ctx, unit_id, r.user_id, r.role, current.get(r.user_id))
        getattr(result, outcome).append(r.user_id)
    for m in dropped:
        await remove(ctx, m)
        result.removed.append(m.user_id)
    await ctx.commit()
    return result
