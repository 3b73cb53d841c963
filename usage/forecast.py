"""Spend forecasts from a daily series: projected period-end spend, a band, the exhaustion date, accuracy.

The model is deliberately simple and explainable to a finance office: the recent
burn rate (mean of the last four weeks of complete days), optionally shaped by a
weekday profile (courses spend on lecture and lab days, not on Sundays). The band
comes from how far real days strayed from the model, and the accuracy figure from
backtesting the very same model on the unit's own past: for each past day, forecast
the spend of a horizon as long as the one ahead now, and compare with what happened.

Pure functions over integers of micro-units (or tokens); the database side is in reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

WINDOW_DAYS = 28
BACKTEST_DAYS = 56
MIN_DAYS_FOR_SEASONALITY = 14
Z_80 = 1.2816  # two-sided 80 % band


@dataclass(frozen=True)
class Model:
    level: float  # mean spend per day
    weekday_factor: tuple[float, ...]  # 7 factors, Monday first, averaging 1
    sigma: float  # standard deviation of a day's error
    days: int  # complete days the model was fitted on

    def expected(self, day: date) -> float:
        return self.level * self.weekday_factor[day.weekday()]


@dataclass(frozen=True)
class Forecast:
    spent: int
    projected: int
    low: int
    high: int
    daily_rate: float
    cap: int | None
    exhaustion: date | None
    seasonal: bool  # a weekday profile was fitted (asked for, and two weeks of history)
    mape: float | None
    backtest_points: int


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


def fit(daily: Mapping[date, int], until: date, seasonal: bool, window: int = WINDOW_DAYS) -> Model:
    """Fit on complete days before `until`, starting at the unit's first day of spend in the window."""
    days = _days(until - timedelta(days=window), until)
    first = next((d for d in days if daily.get(d, 0) != 0), None)
    if first is None:
        return Model(0.0, (1.0,) * 7, 0.0, 0)
    days = [d for d in days if d >= first]
    values = [daily.get(d, 0) for d in days]
    level = sum(values) / len(values)
    factor = [1.0] * 7
    if seasonal and len(days) >= MIN_DAYS_FOR_SEASONALITY and level > 0:
        # Mean per weekday, and the level as the mean of those: a window that is not whole weeks
        # (a unit that started mid-week) then still predicts each weekday by its own mean.
        means = []
        for wd in range(7):
            same = [daily.get(d, 0) for d in days if d.weekday() == wd]
            means.append(sum(same) / len(same))
        level = sum(means) / 7
        factor = [m / level for m in means] if level > 0 else [1.0] * 7
    residuals = [daily.get(d, 0) - level * factor[d.weekday()] for d in days]
    sigma = math.sqrt(sum(r * r for r in residuals) / (len(residuals) - 1)) if len(residuals) > 1 else 0.0
    return Model(level, tuple(factor), sigma, len(days))


def _horizon_sum(model: Model, start: date, days: int) -> float:
    return sum(model.expected(start + timedelta(days=i)) for i in range(days))


def backtest(
    daily: Mapping[date, int], today: date, horizon: int, seasonal: bool, lookback: int = BACKTEST_DAYS
) -> tuple[float | None, int]:
    """MAPE of forecasts made at past days for the next `horizon` days, where the outcome is known."""
    errors: list[float] = []
    horizon = max(horizon, 1)
    for back in range(horizon, horizon + lookback):
        origin = today - timedelta(days=back)
        model = fit(daily, origin, seasonal)
        if model.days < 7:
            continue
        actual = sum(daily.get(origin + timedelta(days=i), 0) for i in range(horizon))
        if actual <= 0:
            continue
        predicted = _horizon_sum(model, origin, horizon)
        errors.append(abs(predicted - actual) / actual)
    if not errors:
        return None, 0
    return sum(errors) / len(errors), len(errors)


def forecast(
    daily: Mapping[date, int],
    today: date,
    period_start: date,
    period_end: date,
    cap: int | None = None,
    seasonal: bool = False,
) -> Forecast:
    """`daily` holds spend per local day (today's partial); the period is [period_start, period_end)."""
    spent = sum(v for d, v in daily.items() if period_start <= d <= today and d < period_end)
    model = fit(daily, today, seasonal)
    today_so_far = daily.get(today, 0)
    ahead = _days(today + timedelta(days=1), period_end)
    rest_of_today = max(0.0, model.expected(today) - today_so_far) if today < period_end else 0.0
    remaining = rest_of_today + sum(model.expected(d) for d in ahead)
    projected = spent + remaining

    horizon = len(ahead) + (1 if today < period_end else 0)
    # Day-to-day noise adds up over the horizon; the level itself is uncertain from a finite window.
    spread = 0.0
    if model.days:
        spread = Z_80 * math.sqrt(
            horizon * model.sigma**2 + (horizon * model.sigma / math.sqrt(model.days)) ** 2
        )
    low = max(float(spent), projected - spread)
    high = projected + spread

    exhaustion = None
    if cap is not None:
        exhaustion = _exhaustion(daily, model, today, period_start, period_end, cap, today_so_far)
    mape, points = backtest(daily, today, horizon, seasonal)
    return Forecast(
        spent=spent,
        projected=round(projected),
        low=round(low),
        high=round(high),
        daily_rate=model.level,
        cap=cap,
        exhaustion=exhaustion,
        seasonal=seasonal and model.days >= MIN_DAYS_FOR_SEASONALITY and model.level > 0,
        mape=mape,
        backtest_points=points,
    )


def _exhaustion(
    daily: Mapping[date, int],
    model: Model,
    today: date,
    period_start: date,
    period_end: date,
    cap: int,
    today_so_far: int,
) -> date | None:
    """The day cumulative spend reaches the cap: already passed, today, or projected within the period."""
    total = 0.0
    for d in _days(period_start, min(today, period_end)):
        total += daily.get(d, 0)
        if total >= cap:
            return d
    if today >= period_end:
        return None
    total += max(float(today_so_far), model.expected(today))
    if total >= cap:
        return today
    for d in _days(today + timedelta(days=1), period_end):
        total += model.expected(d)
        if total >= cap:
            return d
    return None
