"""Budget periods: which window an instant falls in, in the institution's zone.

A window is ``[start, end)`` as aware UTC datetimes; its ``key`` names the
window in Redis counter keys and in ledger charges. Keys are stable under
calendar edits where that is possible (a semester is keyed by its id, not its
dates), so moving a semester's end date does not reset its counters.

* ``day``: local midnight to local midnight (23 or 25 hours across DST).
* ``week``: ISO week, Monday 00:00 local; key ``w:<iso-year>-W<nn>``.
* ``month``: key ``m:YYYY-MM``.
* ``year``: starts on day 1 of ``year_start_month`` (1 = calendar year, 7 = a
  July fiscal year); key ``y:<year it starts in>``.
* ``semester``: from the first day 00:00 to the day after the last day 00:00.
  Between two semesters, the gap is a window of its own, keyed by the semester
  it follows (``g:<id>``), so intersession spend neither eats the next
  semester's allocation nor is free. Before the first semester: key ``g:``
  with no start; after the last: ``g:<last id>`` with no end (adding the next
  semester to the calendar later closes it without changing its key).
* ``none``: one window forever, key ``n`` (a one-off allowance); no reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from quota.model import Period, Semester


@dataclass(frozen=True)
class Calendar:
    """Everything that decides period boundaries for one institution."""

    timezone: str = "UTC"
    semesters: tuple[Semester, ...] = ()
    year_start_month: int = 1

    @property
    def tz(self) -> ZoneInfo:
        return _zone(self.timezone)

    def ordered(self) -> tuple[Semester, ...]:
        return tuple(sorted(self.semesters, key=lambda s: s.start))


@dataclass(frozen=True)
class Window:
    key: str
    start: datetime | None  # None: open towards the past
    end: datetime | None  # None: never resets


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_midnight(day: date, cal: Calendar) -> datetime:
    """The UTC instant of 00:00 local time on ``day`` (``fold=0``: the first one across a DST change)."""
    return datetime.combine(day, time(0), tzinfo=cal.tz).astimezone(UTC)


def _month_start(year: int, month: int) -> date:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return date(year, month, 1)


def window(period: Period, at: datetime, cal: Calendar) -> Window:
    """The window of ``period`` that contains the aware instant ``at``."""
    if at.tzinfo is None:
        raise ValueError("window() needs an aware datetime")
    local = at.astimezone(cal.tz).date()
    if period == "none":
        return Window("n", None, None)
    if period == "day":
        return Window(
            f"d:{local.isoformat()}", local_midnight(local, cal), local_midnight(local + timedelta(1), cal)
        )
    if period == "week":
        monday = local - timedelta(days=local.weekday())
        iso = monday.isocalendar()
        return Window(
            f"w:{iso.year}-W{iso.week:02d}",
            local_midnight(monday, cal),
            local_midnight(monday + timedelta(7), cal),
        )
    if period == "month":
        first = local.replace(day=1)
        return Window(
            f"m:{first.year:04d}-{first.month:02d}",
            local_midnight(first, cal),
            local_midnight(_month_start(first.year, first.month + 1), cal),
        )
    if period == "year":
        m = cal.year_start_month
        start_year = local.year if local.month >= m else local.year - 1
        first = date(start_year, m, 1)
        return Window(
            f"y:{start_year:04d}", local_midnight(first, cal), local_midnight(date(start_year + 1, m, 1), cal)
        )
    if period == "semester":
        return _semester_window(local, cal)
    raise ValueError(f"unknown period {period!r}")


def _semester_window(local: date, cal: Calendar) -> Window:
    previous: Semester | None = None
    for sem in cal.ordered():
        if local < sem.start:
            start = local_midnight(previous.end + timedelta(1), cal) if previous else None
            return Window(f"g:{previous.id if previous else ''}", start, local_midnight(sem.start, cal))
        if local <= sem.end:
            return Window(
                f"s:{sem.id}", local_midnight(sem.start, cal), local_midnight(sem.end + timedelta(1), cal)
            )
        previous = sem
    start = local_midnight(previous.end + timedelta(1), cal) if previous else None
    return Window(f"g:{previous.id if previous else ''}", start, None)


def window_for_key(key: str, cal: Calendar) -> Window:
    """Inverse of :func:`window` (used to prune old counters): the window a stored key names."""
    kind, _, rest = key.partition(":")
    if kind == "n":
        return Window("n", None, None)
    if kind == "d":
        at = local_midnight(date.fromisoformat(rest), cal)
        return window("day", at, cal)
    if kind == "w":
        year, _, week = rest.partition("-W")
        at = local_midnight(date.fromisocalendar(int(year), int(week), 1), cal)
        return window("week", at, cal)
    if kind == "m":
        year, month = rest.split("-")
        return window("month", local_midnight(date(int(year), int(month), 1), cal), cal)
    if kind == "y":
        return window("year", local_midnight(date(int(rest), cal.year_start_month, 1), cal), cal)
    if kind == "s":
        for sem in cal.semesters:
            if sem.id == rest:
                return window("semester", local_midnight(sem.start, cal), cal)
        return Window(key, None, None)  # semester since removed from the calendar: keep, never prune
    if kind == "g":
        ordered = cal.ordered()
        if not rest:
            return Window(key, None, local_midnight(ordered[0].start, cal) if ordered else None)
        for i, sem in enumerate(ordered):
            if sem.id == rest:
                end = local_midnight(ordered[i + 1].start, cal) if i + 1 < len(ordered) else None
                return Window(key, local_midnight(sem.end + timedelta(1), cal), end)
        return Window(key, None, None)
    raise ValueError(f"not a period key: {key!r}")


def boundaries_after(at: datetime, dates: tuple[date, ...], cal: Calendar) -> datetime | None:
    """Earliest local midnight of ``dates`` strictly after ``at`` (when an extra's validity flips)."""
    best: datetime | None = None
    for d in dates:
        t = local_midnight(d, cal)
        if t > at and (best is None or t < best):
            best = t
    return best
