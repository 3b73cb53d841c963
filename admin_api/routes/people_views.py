"""A unit's people with their provenance, memberships and last use; and the leavers view of a subtree.

Who reads what follows the roles of `admin_api.access`:

* the people of a unit: whoever reads its roster (admins and auditors of the unit or above, its
  instructors and TAs), exactly like `GET /units/{unit_id}/members`; each person's other memberships are
  shown only where the caller reads those rosters too;
* the leavers view of a subtree: admins, finance and auditors of the unit or above. Admins and auditors
  answer for who may use what; finance, because every row is money the institution paid for access it had
  ended, and finance already reads per-person usage of its scope (`/usage/top-users`). Instructors, TAs and
  students are refused: it is an institution-wide check of the gateway, not course management.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, Field

from admin_api.access import READERS
from admin_api.context import Ctx, reader
from admin_api.ids import UnitId
from admin_api.leavers import MAX_LIMIT, leavers
from admin_api.people_view import MAX_PAGE, people_of

router = APIRouter(tags=["people"])

SOURCE_HELP = (
    "where the person came from: file (institution file), sso (first sign-in), api (admin API or roster "
    "CSV), scim, roster (OneRoster); null: created before provenance was recorded. Set once by the path that "
    "created the person: a later import or sign-in does not change it"
)


class PersonMembershipOut(BaseModel):
    unit_id: str
    unit_name: str | None
    role: str
    source: str = Field(description="who granted the membership: file | sso | api | scim | roster")
    ends_at: AwareDatetime | None = Field(description="when the membership ends; null: until removed")
    ended: bool = Field(description="past its end and the operator's grace: its keys are refused")
    last_used_at: AwareDatetime | None = Field(description="the latest request admitted in this unit")


class PersonOut(BaseModel):
    user_id: str
    name: str | None
    email: str | None
    source: str | None = Field(description=SOURCE_HELP)
    external_id: str | None = Field(description="the id the source system (SCIM, OneRoster) knows them by")
    created_at: AwareDatetime
    deprovisioned_at: AwareDatetime | None = Field(description="when the person left; null: active")
    erased: bool = Field(description="their name, e-mail and sign-in subject were erased on request")
    memberships: list[PersonMembershipOut] = Field(description="in units whose roster the caller reads")
    last_used_at: AwareDatetime | None = Field(description="the latest of the memberships' last use shown")


class PeopleOut(BaseModel):
    unit_id: str
    people: list[PersonOut]
    next_after: str | None = Field(description="pass as `after` for the next page; null: this is the last")


class LeaverOut(BaseModel):
    key_id: str
    key_prefix: str
    user_id: str
    name: str | None
    unit_id: str
    unit_name: str | None
    ends_at: AwareDatetime | None = Field(description="the membership's end")
    deprovisioned_at: AwareDatetime | None
    stopped_at: AwareDatetime = Field(description="when the key should have stopped working")
    key_revoked_at: AwareDatetime | None
    first_event_at: AwareDatetime = Field(description="the first request admitted after the stop")
    last_event_at: AwareDatetime
    events: int
    cost_micro: int = Field(description="what those requests cost, in micro-units")


class LeaversOut(BaseModel):
    unit_id: str
    grace_seconds: float = Field(
        description="EDUAIQ_MEMBERSHIP_GRACE_SECONDS: a key works this long past its end"
    )
    tolerance_seconds: float = Field(
        description="EDUAIQ_KEY_CACHE_SECONDS: requests admitted within this time of the stop are the "
        "gateway's key cache catching up, as promised, and not listed"
    )
    leavers: list[LeaverOut] = Field(description="should be empty")
    truncated: bool


@router.get(
    "/units/{unit_id}/people",
    response_model=PeopleOut,
    summary="A unit's people: provenance, memberships, last use",
)
async def list_people(
    unit_id: UnitId,
    after: str | None = Query(default=None, max_length=128, description="the previous page's `next_after`"),
    limit: int = Query(default=200, ge=1, le=MAX_PAGE),
    ctx: Ctx = Depends(reader("org:read")),
) -> PeopleOut:
    access = ctx.access
    access.unit(unit_id)
    access.require(access.can_read_roster(unit_id), "you may not read this roster", unit_id)
    page = await people_of(
        ctx.session, ctx.institution_id, unit_id, visible=access.can_read_roster,
        grace_seconds=ctx.state.settings.membership_grace_seconds, after=after, limit=limit,
    )  # fmt: skip
    units = access.tree.units
    out = []
    for p in page.people:
        u = p.user
        memberships = [
            PersonMembershipOut(unit_id=m.unit_id, unit_name=units[m.unit_id].name if m.unit_id in units else None,
                                role=m.role, source=m.source, ends_at=m.ends_at, ended=m.ended,
                                last_used_at=m.last_used_at)
            for m in p.memberships
        ]  # fmt: skip
        out.append(
            PersonOut(user_id=u.id, name=u.name, email=u.email, source=u.source, external_id=u.external_id,
                      created_at=u.created_at, deprovisioned_at=u.deprovisioned_at, erased=u.erased_at is not None,
                      memberships=memberships, last_used_at=p.last_used_at)
        )  # fmt: skip
    return PeopleOut(unit_id=unit_id, people=out, next_after=page.next_after)


@router.get(
    "/units/{unit_id}/leavers", response_model=LeaversOut, summary="Keys that worked after their person left"
)
async def list_leavers(
    unit_id: UnitId,
    limit: int = Query(default=200, ge=1, le=MAX_LIMIT),
    ctx: Ctx = Depends(reader("usage:read")),
) -> LeaversOut:
    """Every key of a membership in this unit or below whose requests were admitted after the membership
    ended (plus the grace) or its person was deprovisioned; see `admin_api.leavers`. Should be empty."""
    access = ctx.access
    access.unit(unit_id)
    access.require(access.scope_covers(READERS, unit_id), "admins, finance and auditors read the leavers view",
                   unit_id)  # fmt: skip
    settings = ctx.state.settings
    report = await leavers(
        ctx.session, ctx.institution_id, access.tree.subtree(unit_id),
        grace_seconds=settings.membership_grace_seconds, tolerance_seconds=settings.key_cache_seconds, limit=limit,
    )  # fmt: skip
    units = access.tree.units
    return LeaversOut(
        unit_id=unit_id,
        grace_seconds=settings.membership_grace_seconds,
        tolerance_seconds=settings.key_cache_seconds,
        leavers=[
            LeaverOut(**vars(r), unit_name=units[r.unit_id].name if r.unit_id in units else None)
            for r in report.leavers
        ],
        truncated=report.truncated,
    )
