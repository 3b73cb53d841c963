"""Extras: funds a unit bought itself (a grant), spent after its allocation and never charged above it.

They are rules like a budget: set by an admin above the unit (institution
admins for the root). Ids are unique in the institution, as in the
institution file, because quota names an extra's counter by its id alone.
"""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from admin_api.budget_view import ExtraView, numbers_for
from admin_api.context import Ctx, reader, writer
from admin_api.errors import conflict, not_found
from admin_api.ids import SLUG, TEXT, ExtraId, UnitId
from core.models import Extra
from quota.waterfall import MAX_EXACT

router = APIRouter(tags=["extras"])

EARLIEST, LATEST = date(2000, 1, 1), date(2999, 12, 31)


class ExtraBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(default="cost", pattern=r"^(cost|tokens)$")
    amount: int = Field(gt=0, le=MAX_EXACT, description="micro-units for cost, tokens for tokens")
    valid_from: date
    valid_to: date = Field(description="inclusive: the last day the extra can pay")
    chargeback: str | None = Field(default=None, min_length=1, max_length=128, pattern=TEXT)

    @model_validator(mode="after")
    def _window(self) -> ExtraBody:
        if self.valid_from > self.valid_to:
            raise ValueError("valid_from must not be after valid_to")
        if self.valid_from < EARLIEST or self.valid_to > LATEST:
            raise ValueError(f"dates must be within {EARLIEST} .. {LATEST}")
        return self


class ExtraCreate(ExtraBody):
    id: str = Field(pattern=SLUG)


async def _views(ctx: Ctx, unit_id: str) -> list[ExtraView]:
    numbers = await numbers_for(ctx.session, ctx.institution_id, ctx.state.quota)
    return numbers.view(unit_id).extras


async def _extra(ctx: Ctx, unit_id: str, extra_id: str) -> Extra:
    extra = await ctx.session.get(Extra, (ctx.institution_id, extra_id))
    if extra is None or extra.unit_id != unit_id:
        raise not_found("extra", extra_id)
    return extra


def _guard(ctx: Ctx, unit_id: str) -> None:
    ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_edit_rules(unit_id), "only an admin above this unit sets its extras", unit_id
    )


def _one(views: list[ExtraView], extra_id: str) -> ExtraView:
    return next(v for v in views if v.id == extra_id)


@router.get(
    "/units/{unit_id}/extras", response_model=list[ExtraView], summary="A unit's extras with their spend"
)
async def list_extras(unit_id: UnitId, ctx: Ctx = Depends(reader("org:read"))) -> list[ExtraView]:
    ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_unit(unit_id), "you have no role in this unit", unit_id)
    return await _views(ctx, unit_id)


@router.post("/units/{unit_id}/extras", response_model=ExtraView, status_code=201, summary="Add an extra")
async def create_extra(
    unit_id: UnitId, body: ExtraCreate, ctx: Ctx = Depends(writer("org:write"))
) -> ExtraView:
    _guard(ctx, unit_id)
    existing = await ctx.session.get(Extra, (ctx.institution_id, body.id))
    if existing is not None:
        raise conflict("extra_exists", f"an extra {body.id!r} already exists", unit=existing.unit_id)
    extra = Extra(institution_id=ctx.institution_id, unit_id=unit_id, **body.model_dump())
    ctx.session.add(extra)
    await ctx.session.flush()
    await numbers_for(ctx.session, ctx.institution_id, None)
    ctx.audit_row("extra.create", None, extra)
    await ctx.commit()
    return _one(await _views(ctx, unit_id), body.id)


@router.put("/units/{unit_id}/extras/{extra_id}", response_model=ExtraView, summary="Change an extra")
async def put_extra(
    unit_id: UnitId, extra_id: ExtraId, body: ExtraBody, ctx: Ctx = Depends(writer("org:write"))
) -> ExtraView:
    _guard(ctx, unit_id)
    extra = await _extra(ctx, unit_id, extra_id)
    before = extra.model_copy()
    for name, value in body.model_dump().items():
        setattr(extra, name, value)
    if extra.model_dump() != before.model_dump():
        ctx.audit_row("extra.update", before, extra)
    await ctx.session.flush()
    await numbers_for(ctx.session, ctx.institution_id, None)
    await ctx.commit()
    return _one(await _views(ctx, unit_id), extra_id)


@router.delete("/units/{unit_id}/extras/{extra_id}", status_code=204, summary="Remove an extra")
async def delete_extra(
    unit_id: UnitId, extra_id: ExtraId, ctx: Ctx = Depends(writer("org:write"))
) -> Response:
    _guard(ctx, unit_id)
    extra = await _extra(ctx, unit_id, extra_id)
    ctx.audit_row("extra.delete", extra, None)
    await ctx.session.delete(extra)
    await ctx.commit()
    return Response(status_code=204)
