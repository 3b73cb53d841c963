"""Forecasts from a daily series: hand-checked projections, exhaustion dates, bands and backtested accuracy."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from usage.forecast import forecast

NOV_1, DEC_1 = date(2026, 11, 1), date(2026, 12, 1)
TODAY = date(2026, 11, 18)  # a Wednesday


def _series(days: int, value_for) -> dict[date, int]:
    return {TODAY - timedelta(days=i): value_for(TODAY - timedelta(days=i)) for i in range(1, days + 1)}


def test_steady_spend_projects_exactly_with_no_band() -> None:
    daily = _series(120, lambda d: 1000)
    daily[TODAY] = 400
    f = forecast(daily, TODAY, NOV_1, DEC_1, cap=None)
    # 17 full days + 400 so far; the rest of today (600) and Nov 19..30 (12 days) at 1000.
    assert f.spent == 17_400
    assert f.projected == 17_400 + 600 + 12_000
    assert (f.low, f.high) == (f.projected, f.projected)
    assert f.daily_rate == 1000
    assert f.mape == 0.0 and f.backtest_points > 0


def test_exhaustion_dates() -> None:
    daily = _series(120, lambda d: 1000)
    daily[TODAY] = 400
    # Through Nov 17: 17,000; today counts as a full 1,000 -> 18,000 on the 18th; +1,000 a day after.
    assert forecast(daily, TODAY, NOV_1, DEC_1, cap=25_000).exhaustion == date(2026, 11, 25)
    assert forecast(daily, TODAY, NOV_1, DEC_1, cap=18_000).exhaustion == TODAY
    assert forecast(daily, TODAY, NOV_1, DEC_1, cap=10_000).exhaustion == date(2026, 11, 10)  # already passed
    assert forecast(daily, TODAY, NOV_1, DEC_1, cap=30_000).exhaustion == date(2026, 11, 30)
    assert forecast(daily, TODAY, NOV_1, DEC_1, cap=30_001).exhaustion is None


def test_course_timetable_is_learnt_from_the_weekdays() -> None:
    weekdays_only = _series(120, lambda d: 1500 if d.weekday() < 5 else 0)
    weekdays_only[TODAY] = 600
    seasonal = forecast(weekdays_only, TODAY, NOV_1, DEC_1, cap=None, seasonal=True)
    # Weekdays Nov 2..17: 12 -> 18,000, plus 600 today; the rest of today 900; Nov 19..30 holds 8 weekdays.
    assert seasonal.spent == 18_600
    assert seasonal.projected == 18_600 + 900 + 8 * 1500  # = 21 weekdays of November x 1,500
    assert seasonal.seasonal
    assert seasonal.mape == 0.0
    flat = forecast(weekdays_only, TODAY, NOV_1, DEC_1, cap=None, seasonal=False)
    assert flat.projected != seasonal.projected
    assert flat.mape is not None and flat.mape > 0


def test_no_history_projects_what_is_spent() -> None:
    f = forecast({TODAY: 250}, TODAY, NOV_1, DEC_1, cap=100)
    assert (f.spent, f.projected, f.low, f.high) == (250, 250, 250, 250)
    assert f.exhaustion == TODAY
    assert f.mape is None and f.backtest_points == 0


def test_noisy_spend_has_a_band_around_the_projection() -> None:
    noisy = _series(90, lambda d: 1000 + (d.toordinal() * 7919 % 1000) - 500)
    f = forecast(noisy, TODAY, NOV_1, DEC_1)
    assert f.low < f.projected < f.high
    assert f.mape is not None and 0 < f.mape < 1


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 50_000), min_size=0, max_size=100),
    cap=st.none() | st.integers(0, 2_000_000),
    seasonal=st.booleans(),
    offset=st.integers(0, 29),
)
def test_invariants_for_any_series(values: list[int], cap: int | None, seasonal: bool, offset: int) -> None:
    today = NOV_1 + timedelta(days=offset)
    daily = {today - timedelta(days=i): v for i, v in enumerate(values)}
    f = forecast(daily, today, NOV_1, DEC_1, cap=cap, seasonal=seasonal)
    assert f.spent == sum(v for d, v in daily.items() if NOV_1 <= d <= today)
    assert f.spent <= f.low <= f.projected <= f.high
    if cap is not None and f.spent >= cap:
        assert f.exhaustion is not None and f.exhaustion <= today
    if f.exhaustion is not None:
        assert NOV_1 <= f.exhaustion < DEC_1
        if cap is not None and f.exhaustion > today:
            assert f.projected >= cap
    if cap is not None and f.projected < cap:
        assert f.exhaustion is None
    assert f.mape is None or f.mape >= 0
