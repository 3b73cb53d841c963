"""Report queries over the ledger for the admin API: breakdowns, top users, spend against caps, forecasts.

Every function takes the caller's subtree (`unit_ids`) and never reads outside it.
Time buckets are the institution's local hours, days and months. Spend against a
cap follows the budget semantics: what a unit's allocation paid for is the cost of
every request on whose path it lies, less what extras at or below it paid and less
unfunded overage (extras never charge the ancestors of the unit that holds them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import String

from usage import forecast as fc
from usage.events import Metric

Dimension = Literal["unit", "model", "provider", "user", "purpose", "status"]
Bucket = Literal["hour", "day", "month"]

_DIMENSION_COLUMNS: dict[str, str] = {
    "unit": "unit_id",
    "model": "model_id",
    "provider": "provider_id",
    "user": "user_id",
    "purpose": "purpose",
    "status": "status",
}
_SEASONAL_KINDS = frozenset({"course", "teaching"})


@dataclass(frozen=True)
class UsageRow:
    keys: dict[str, str | None]
    bucket: datetime | None  # local start of the hour/day/month, aware in the institution's zone
    requests: int
    input_tokens: int
    output_tokens: int
    image_tokens: int
    cached_tokens: int
    cost_micro: int
    overage_micro: int


@dataclass(frozen=True)
class UserUsage:
    user_id: str | None
    requests: int
    tokens: int
    cost_micro: int


@dataclass(frozen=True)
class SubtreeUsage:
    unit_id: str
    requests: int
    tokens: int
    cost_micro: int  # gross cost of the subtree's requests
    overage_micro: int
    extras_cost_micro: int  # paid by extras held at or below the unit
    extras_tokens: int
    allocation_cost_micro: int  # what counts against the unit's cost cap
    allocation_tokens: int  # what counts against the unit's token cap


@dataclass(frozen=True)
class CapStatus:
    unit_id: str
    metric: Metric
    cap: int | None
    spent: int
    remaining: int | None
    used_fraction: float | None


@dataclass(frozen=True)
class UnitForecast:
    unit_id: str
    forecast: fc.Forecast


def _units_param(name: str = "units") -> Any:
    return bindparam(name, type_=ARRAY(String()))


async def institution_timezone(session: AsyncSession, institution_id: str) -> str:
    row = (
        await session.execute(text("select timezone from institution where id = :i"), {"i": institution_id})
    ).first()
    return str(row[0]) if row else "UTC"


async def usage_report(
    session: AsyncSession,
    institution_id: str,
    unit_ids: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[Dimension] = ("unit",),
    bucket: Bucket | None = None,
    tz: str | None = None,
) -> list[UsageRow]:
    """Sums of requests, tokens and cost of requests charged to `unit_ids`, grouped as asked."""
    for dim in group_by:
        if dim not in _DIMENSION_COLUMNS:
            raise ValueError(f"unknown dimension {dim!r}")
    if bucket not in (None, "hour", "day", "month"):
        raise ValueError(f"unknown bucket {bucket!r}")
    zone = tz or await institution_timezone(session, institution_id)
    cols = [f"{_DIMENSION_COLUMNS[d]} as {d}" for d in group_by]
    groups = [_DIMENSION_COLUMNS[d] for d in group_by]
    if bucket:
        cols.append(f"date_trunc('{bucket}', ended_at at time zone :tz) as bucket")
        groups.append("bucket")
    select = ", ".join(
        [
            *cols,
            "count(*)",
            "sum(input_tokens)",
            "sum(output_tokens)",
            "sum(image_tokens)",
            "sum(cached_tokens)",
            "sum(cost_micro)",
            "sum(overage_micro)",
        ]
    )
    sql = (
        f"select {select} from usage_event where institution_id = :inst and unit_id = any(:units) "
        "and ended_at >= :start and ended_at < :end"
    )
    if groups:
        order = ", ".join(str(i + 1) for i in range(len(groups)))
        sql += f" group by {', '.join(groups)} order by {order}"
    stmt = text(sql).bindparams(_units_param())
    params: dict[str, Any] = {"inst": institution_id, "units": list(unit_ids), "start": start, "end": end}
    if bucket:
        params["tz"] = zone
    rows = (await session.execute(stmt, params)).all()
    out = []
    zinfo = ZoneInfo(zone)
    for r in rows:
        keys: dict[str, str | None] = {str(d): r[i] for i, d in enumerate(group_by)}
        at = r[len(group_by)].replace(tzinfo=zinfo) if bucket else None
        n = len(group_by) + (1 if bucket else 0)
        nums = [int(v or 0) for v in r[n:]]
        if nums[0] == 0:
            continue
        out.append(UsageRow(keys, at, *nums))
    return out


async def top_users(
    session: AsyncSession,
    institution_id: str,
    unit_ids: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    limit: int = 10,
    metric: Metric = "cost",
) -> list[UserUsage]:
    order = "sum(cost_micro)" if metric == "cost" else "sum(input_tokens + output_tokens)"
    stmt = text(
        "select user_id, count(*), sum(input_tokens + output_tokens), sum(cost_micro) from usage_event "
        "where institution_id = :inst and unit_id = any(:units) and ended_at >= :start and ended_at < :end "
        f"group by user_id order by {order} desc, user_id limit :limit"
    ).bindparams(_units_param())
    rows = await session.execute(
        stmt, {"inst": institution_id, "units": list(unit_ids), "start": start, "end": end, "limit": limit}
    )
    return [UserUsage(r[0], int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in rows]


_SUBTREE_SQL = """
select p.unit,
       count(*),
       sum(e.input_tokens + e.output_tokens),
       sum(e.cost_micro),
       sum(e.overage_micro),
       sum(x.cost_extras),
       sum(x.token_extras)
from usage_event e
cross join lateral jsonb_array_elements_text(e.path::jsonb) with ordinality as p(unit, idx)
cross join lateral (
    select coalesce(sum((xp->>'amount')::bigint) filter (where coalesce(xp->>'metric', 'cost') = 'cost'), 0)
               as cost_extras,
           coalesce(sum((xp->>'amount')::bigint) filter (where xp->>'metric' = 'tokens'), 0) as token_extras
    from jsonb_array_elements(e.extras_paid::jsonb) xp
    where xp->>'unit_id' in (
        select q.unit from jsonb_array_elements_text(e.path::jsonb) with ordinality as q(unit, qi) where qi <= p.idx
    )
) x
where e.institution_id = :inst and e.ended_at >= :start and e.ended_at < :end and p.unit = any(:units)
group by p.unit
order by p.unit
"""


async def subtree_usage(
    session: AsyncSession, institution_id: str, unit_ids: Sequence[str], start: datetime, end: datetime
) -> list[SubtreeUsage]:
    """Per unit, everything charged on paths through it (the unit and its whole subtree)."""
    stmt = text(_SUBTREE_SQL).bindparams(_units_param())
    rows = await session.execute(
        stmt, {"inst": institution_id, "units": list(unit_ids), "start": start, "end": end}
    )
    out = []
    for r in rows:
        requests, tokens, cost, overage, x_cost, x_tokens = (int(v or 0) for v in r[1:])
        out.append(
            SubtreeUsage(
                unit_id=r[0],
                requests=requests,
                tokens=tokens,
                cost_micro=cost,
                overage_micro=overage,
                extras_cost_micro=x_cost,
                extras_tokens=x_tokens,
                allocation_cost_micro=cost - overage - x_cost,
                allocation_tokens=tokens - x_tokens,
            )
        )
    return out


async def spend_against_caps(
    session: AsyncSession,
    institution_id: str,
    unit_ids: Sequence[str],
    start: datetime,
    end: datetime,
    caps: Mapping[str, int | None],
    *,
    metric: Metric = "cost",
) -> list[CapStatus]:
    """Caps come from the quota engine (per unit, for the period [start, end)); None means no cap of its own."""
    wanted = [u for u in unit_ids if u in caps]
    usage = {u.unit_id: u for u in await subtree_usage(session, institution_id, wanted, start, end)}
    out = []
    for unit in wanted:
        u = usage.get(unit)
        spent = 0 if u is None else (u.allocation_cost_micro if metric == "cost" else u.allocation_tokens)
        cap = caps[unit]
        out.append(
            CapStatus(
                unit_id=unit,
                metric=metric,
                cap=cap,
                spent=spent,
                remaining=None if cap is None else cap - spent,
                used_fraction=None if not cap else spent / cap,
            )
        )
    return out


_DAILY_SQL = """
select p.unit,
       (e.ended_at at time zone :tz)::date as day,
       sum(e.cost_micro - e.overage_micro - x.cost_extras)
from usage_event e
cross join lateral jsonb_array_elements_text(e.path::jsonb) with ordinality as p(unit, idx)
cross join lateral (
    select coalesce(sum((xp->>'amount')::bigint) filter (where coalesce(xp->>'metric', 'cost') = 'cost'), 0)
               as cost_extras
    from jsonb_array_elements(e.extras_paid::jsonb) xp
    where xp->>'unit_id' in (
        select q.unit from jsonb_array_elements_text(e.path::jsonb) with ordinality as q(unit, qi) where qi <= p.idx
    )
) x
where e.institution_id = :inst and e.ended_at >= :start and e.ended_at < :end and p.unit = any(:units)
group by 1, 2
"""


async def daily_allocation_spend(
    session: AsyncSession,
    institution_id: str,
    unit_ids: Sequence[str],
    first_day: date,
    last_day: date,
    tz: str,
) -> dict[str, dict[date, int]]:
    """Per unit and local day, the cost counted against the unit's cap (days first_day..last_day)."""
    zone = ZoneInfo(tz)
    start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=zone).astimezone(UTC)
    nxt = last_day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).astimezone(UTC)
    stmt = text(_DAILY_SQL).bindparams(_units_param())
    rows = await session.execute(
        stmt, {"inst": institution_id, "units": list(unit_ids), "start": start, "end": end, "tz": tz}
    )
    out: dict[str, dict[date, int]] = {u: {} for u in unit_ids}
    for unit, day, amount in rows:
        out[unit][day] = int(amount or 0)
    return out


async def _seasonal_units(session: AsyncSession, institution_id: str, unit_ids: Sequence[str]) -> set[str]:
    """Courses (and teaching pools) follow the week's timetable; the unit table says which units are."""
    stmt = text("select id, kind from unit where institution_id = :inst and id = any(:units)").bindparams(
        _units_param()
    )
    rows = await session.execute(stmt, {"inst": institution_id, "units": list(unit_ids)})
    return {r[0] for r in rows if r[1].lower() in _SEASONAL_KINDS}


async def forecast_units(
    session: AsyncSession,
    institution_id: str,
    unit_ids: Sequence[str],
    period_start: date,
    period_end: date,
    caps: Mapping[str, int | None] | None = None,
    *,
    today: date | None = None,
    seasonal: Mapping[str, bool] | None = None,
    tz: str | None = None,
) -> list[UnitForecast]:
    """Cost forecasts for the period [period_start, period_end) in local days, per unit.

    `seasonal` overrides the default (weekday profile for course and teaching units).
    """
    zone = tz or await institution_timezone(session, institution_id)
    today = today or datetime.now(ZoneInfo(zone)).date()
    horizon = max((period_end - today).days, 1)
    first = min(period_start, today - timedelta(days=fc.WINDOW_DAYS + fc.BACKTEST_DAYS + horizon))
    series = await daily_allocation_spend(session, institution_id, unit_ids, first, today, zone)
    by_kind = await _seasonal_units(session, institution_id, unit_ids)
    caps = caps or {}
    out = []
    for unit in unit_ids:
        is_seasonal = seasonal[unit] if seasonal and unit in seasonal else unit in by_kind
        out.append(
            UnitForecast(
                unit,
                fc.forecast(
                    series.get(unit, {}), today, period_start, period_end, caps.get(unit), is_seasonal
                ),
            )
        )
    return out
