"""Budget periods in the institution's zone, and their keys."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.model import PERIODS, Semester
from quota.periods import Calendar, window, window_for_key

CHI = Calendar(
    "America/Chicago",
    (Semester("fall-2026", date(2026, 8, 24), date(2026, 12, 18)),
     Semester("spring-2027", date(2027, 1, 11), date(2027, 5, 7))),
)  # fmt: skip


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_month_in_local_time() -> None:
    # 2026-12-01 03:00 UTC is still November 30th in Chicago
    w = window("month", utc(2026, 12, 1, 3), CHI)
    assert (w.key, w.start, w.end) == ("m:2026-11", utc(2026, 11, 1, 5), utc(2026, 12, 1, 6))


def test_day_across_dst_is_25_hours() -> None:
    w = window("day", utc(2026, 11, 1, 12), CHI)  # DST ends on Nov 1st 2026 in the US
    assert w.key == "d:2026-11-01" and w.end is not None and w.start is not None
    assert w.end - w.start == timedelta(hours=25)


def test_iso_week() -> None:
    w = window("week", utc(2027, 1, 2, 12), CHI)  # a Saturday that belongs to ISO week 2026-W53
    assert w.key == "w:2026-W53" and w.start == utc(2026, 12, 28, 6)


def test_fiscal_year() -> None:
    cal = Calendar("UTC", (), year_start_month=7)
    assert window("year", utc(2027, 3, 1), cal).key == "y:2026"
    assert window("year", utc(2027, 7, 1), cal).key == "y:2027"


def test_semesters_and_the_gaps_between_them() -> None:
    fall = window("semester", utc(2026, 12, 18, 23), CHI)  # last day of fall, local evening
    assert (fall.key, fall.end) == ("s:fall-2026", utc(2026, 12, 19, 6))
    gap = window("semester", utc(2026, 12, 25), CHI)
    assert (gap.key, gap.start, gap.end) == ("g:fall-2026", utc(2026, 12, 19, 6), utc(2027, 1, 11, 6))
    before = window("semester", utc(2026, 1, 1), CHI)
    assert (before.key, before.start, before.end) == ("g:", None, utc(2026, 8, 24, 5))
    after = window("semester", utc(2027, 6, 1), CHI)
    assert (after.key, after.end) == ("g:spring-2027", None)


def test_none_never_resets() -> None:
    w = window("none", utc(2030, 1, 1), CHI)
    assert (w.key, w.start, w.end) == ("n", None, None)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        window("day", datetime(2026, 1, 1), CHI)


@given(
    period=st.sampled_from(PERIODS),
    at=st.datetimes(datetime(2025, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    tz=st.sampled_from(["UTC", "America/Chicago", "Europe/Berlin", "Asia/Kolkata", "Pacific/Auckland"]),
)
def test_windows_contain_their_instant_and_keys_invert(period: str, at: datetime, tz: str) -> None:
    cal = Calendar(tz, CHI.semesters, year_start_month=9)
    w = window(period, at, cal)  # type: ignore[arg-type]
    assert w.start is None or w.start <= at
    assert w.end is None or at < w.end
    assert window_for_key(w.key, cal) == w
    if w.end is not None:  # the next window starts where this one ends, with another key
        nxt = window(period, w.end, cal)  # type: ignore[arg-type]
        assert nxt.start == w.end and nxt.key != w.key
