"""Billing months in the institution's own time zone, as UTC instants.

Finance closes a month by the local calendar (November in Chicago starts at
05:00 UTC), so every export and report boundary is computed here and nowhere else.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")

# How long after a month ends its export becomes final: late events (spool replay, consumer lag) land first.
DEFAULT_CLOSE_GRACE = timedelta(days=1)


def parse_month(period: str) -> tuple[int, int]:
    m = _MONTH.match(period)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    return int(m.group(1)), int(m.group(2))


def local_midnight(day: date, tz: str) -> datetime:
    """The UTC instant of local midnight starting `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def month_bounds(period: str, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of the local calendar month, as aware UTC datetimes."""
    year, month = parse_month(period)
    nxt = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return local_midnight(date(year, month, 1), tz), local_midnight(nxt, tz)


def is_closed(period: str, tz: str, now: datetime, grace: timedelta = DEFAULT_CLOSE_GRACE) -> bool:
    return now >= month_bounds(period, tz)[1] + grace


def previous_month(now: datetime, tz: str) -> str:
    local = now.astimezone(ZoneInfo(tz)).date().replace(day=1) - timedelta(days=1)
    return f"{local.year:04d}-{local.month:02d}"


def local_date(at: datetime, tz: str) -> date:
    return at.astimezone(ZoneInfo(tz)).date()


def iso_z(at: datetime) -> str:
    """FOCUS date/time format: UTC, seconds, 'Z'."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
