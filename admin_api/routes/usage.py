"""Usage reports, forecasts and chargeback exports of a unit's subtree, from the usage ledger.

The queries are the usage package's; this module decides who may run them on
which units and turns the answers into JSON (or the export's file). Money is
micro-units; times are the institution's local buckets, as aware datetimes.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from admin_api.budget_view import calendar_of, numbers_for
from admin_api.context import Ctx, reader
from admin_api.errors import invalid
from admin_api.ids import UnitId
from core.models import Institution
from quota.periods import window
from usage import reports
from usage.export import ExportError, export
from usage.periods import month_bounds

router = APIRouter(tags=["usage"])

Dimension = Literal["unit", "model", "provider", "user", "purpose", "status"]
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2999, 12, 31, tzinfo=UTC)
MAX_RANGE = timedelta(days=3 * 366)
MAX_HOURLY_RANGE = timedelta(days=62)
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "focus": "text/csv; charset=utf-8",
    "json": "application/json",
}


class UsageRowOut(BaseModel):
    keys: dict[str, str | None]
    bucket: datetime | None
    requests: int
    input_tokens: int
    output_tokens: int
    image_tokens: int
    cached_tokens: int
    cost_micro: int
    overage_micro: int  # what no budget could fund (charged to nobody's allocation)


class UsageReportOut(BaseModel):
    unit_id: str | None  # None: the caller's own usage across their units
    start: datetime
    end: datetime
    group_by: list[str]
    bucket: str | None
    rows: list[UsageRowOut]


class UserUsageOut(BaseModel):
    user_id: str | None
    requests: int
    tokens: int
    cost_micro: int


class ForecastOut(BaseModel):
    unit_id: str
    period_start: date
    period_end: date  # exclusive
    spent: int
    projected: int
    low: int
    high: int
    daily_rate: float
    cap: int | None
    exhaustion: date | None  # the day spend reaches the cap, if it does within the period
    seasonal: bool


def _utc(at: datetime | None, default: datetime) -> datetime:
    if at is None:
        return default
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    try:
        at = at.astimezone(UTC)
    except OverflowError:
        return EARLIEST if at.year < 5000 else LATEST
    return min(max(at, EARLIEST), LATEST)


async def _month_now(ctx: Ctx) -> tuple[datetime, datetime]:
    inst = await ctx.session.get(Institution, ctx.institution_id)
    assert inst is not None
    local = datetime.now(ZoneInfo(inst.timezone))
    return month_bounds(f"{local.year:04d}-{local.month:02d}", inst.timezone)


async def _range(
    ctx: Ctx, start: datetime | None, end: datetime | None, hourly: bool
) -> tuple[datetime, datetime]:
    month_start, month_end = await _month_now(ctx)
    lo, hi = _utc(start, month_start), _utc(end, month_end)
    if hi <= lo:
        raise invalid("end must be after start", [{"path": "query.end", "message": "not after start"}])
    if hi - lo > (MAX_HOURLY_RANGE if hourly else MAX_RANGE):
        raise invalid(
            "the time range is too long for one report", [{"path": "query.start", "message": "too early"}]
        )
    return lo, hi


def _subtree(ctx: Ctx, unit_id: str) -> list[str]:
    ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_usage(unit_id), "you may not read this unit's usage", unit_id)
    return ctx.access.tree.subtree(unit_id)


@router.get(
    "/units/{unit_id}/usage", response_model=UsageReportOut, summary="Usage of a unit and everything below it"
)
async def unit_usage(
    unit_id: UnitId,
    start: datetime | None = Query(default=None, description="default: the start of this month (local)"),
    end: datetime | None = Query(default=None, description="exclusive; default: the end of this month"),
    group_by: list[Dimension] = Query(default=["unit"]),
    bucket: Literal["hour", "day", "month"] | None = None,
    ctx: Ctx = Depends(reader("usage:read")),
) -> UsageReportOut:
    units = _subtree(ctx, unit_id)
    lo, hi = await _range(ctx, start, end, bucket == "hour")
    dims = list(dict.fromkeys(group_by))
    rows = await reports.usage_report(
        ctx.session, ctx.institution_id, units, lo, hi, group_by=dims, bucket=bucket
    )
    return UsageReportOut(unit_id=unit_id, start=lo, end=hi, group_by=list(dims), bucket=bucket,
                          rows=[UsageRowOut(**vars(r)) for r in rows])  # fmt: skip


@router.get(
    "/units/{unit_id}/usage/top-users",
    response_model=list[UserUsageOut],
    summary="Heaviest users below a unit",
)
async def top_users(
    unit_id: UnitId,
    start: datetime | None = None,
    end: datetime | None = None,
    metric: Literal["cost", "tokens"] = "cost",
    limit: int = Query(default=10, ge=1, le=200),
    ctx: Ctx = Depends(reader("usage:read")),
) -> list[UserUsageOut]:
    units = _subtree(ctx, unit_id)
    lo, hi = await _range(ctx, start, end, False)
    found = await reports.top_users(
        ctx.session, ctx.institution_id, units, lo, hi, limit=limit, metric=metric
    )
    return [UserUsageOut(**vars(u)) for u in found]


@router.get(
    "/units/{unit_id}/usage/forecast",
    response_model=list[ForecastOut],
    summary="Spend forecast to the end of the current period, for a unit and its children",
)
async def forecast(unit_id: UnitId, ctx: Ctx = Depends(reader("usage:read"))) -> list[ForecastOut]:
    _subtree(ctx, unit_id)
    tree = ctx.access.tree
    numbers = await numbers_for(ctx.session, ctx.institution_id, None)
    units = [unit_id, *(k for k in tree.kids(unit_id) if not tree.units[k].archived)]
    cal = calendar_of(numbers.spec)
    out: list[ForecastOut] = []
    for uid in units:
        win = window(numbers.spec.effective_period(uid), numbers.at, cal)
        if win.start is None or win.end is None:  # a one-off allowance or an open gap: the calendar month
            start_day = numbers.at.astimezone(cal.tz).date().replace(day=1)
            end_day = (start_day + timedelta(days=32)).replace(day=1)
        else:
            start_day, end_day = win.start.astimezone(cal.tz).date(), win.end.astimezone(cal.tz).date()
        [f] = await reports.forecast_units(ctx.session, ctx.institution_id, [uid], start_day, end_day,
                                           {uid: numbers.caps[uid]["cost"]}, tz=cal.timezone)  # fmt: skip
        fc = f.forecast
        out.append(ForecastOut(unit_id=uid, period_start=start_day, period_end=end_day, spent=fc.spent,
                               projected=fc.projected, low=fc.low, high=fc.high, daily_rate=fc.daily_rate,
                               cap=fc.cap, exhaustion=fc.exhaustion, seasonal=fc.seasonal))  # fmt: skip
    return out


@router.get("/me/usage", response_model=UsageReportOut, summary="Your own usage in each of your units")
async def my_usage(
    start: datetime | None = None,
    end: datetime | None = None,
    ctx: Ctx = Depends(reader("usage:read")),
) -> UsageReportOut:
    lo, hi = await _range(ctx, start, end, False)
    units = sorted(ctx.access.grants.memberships)
    rows = await reports.usage_report(
        ctx.session, ctx.institution_id, units, lo, hi, group_by=["user", "unit", "model"]
    )
    mine = [UsageRowOut(**vars(r)) for r in rows if r.keys.get("user") == ctx.caller.user_id]
    return UsageReportOut(
        unit_id="", start=lo, end=hi, group_by=["user", "unit", "model"], bucket=None, rows=mine
    )


@router.get(
    "/units/{unit_id}/export",
    summary="Chargeback export of a month (csv, json or FinOps FOCUS); a closed month is frozen",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}, "application/json": {}}}},
)
async def export_month(
    unit_id: UnitId,
    period: str = Query(
        pattern=r"^(19|2\d)\d{2}-(0[1-9]|1[0-2])$", description="YYYY-MM, the institution's month"
    ),
    format: Literal["csv", "json", "focus"] = "csv",
    ctx: Ctx = Depends(reader("export:read")),
) -> Response:
    access = ctx.access
    access.unit(unit_id)
    access.require(access.can_export(unit_id), "admins, finance and auditors export a unit's usage", unit_id)
    scope = None if unit_id == access.tree.root else unit_id
    try:
        content = await export(ctx.session, ctx.institution_id, period, format, scope)
    except ExportError as exc:
        raise invalid(str(exc), [{"path": "query", "message": str(exc)}]) from None
    # Who took which month's figures out of the system: finance data leaving is an audited act.
    ctx.audit("export.download", f"export:{unit_id}/{period}/{format}", None,
              {"unit_id": unit_id, "period": period, "format": format, "bytes": len(content),
               "sha256": hashlib.sha256(content).hexdigest()}, org=False)  # fmt: skip
    await ctx.commit()
    filename = f"{ctx.institution_id}-{unit_id}-{period}.{'json' if format == 'json' else 'csv'}"
    return Response(content, media_type=CONTENT_TYPES[format],
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})  # fmt: skip
