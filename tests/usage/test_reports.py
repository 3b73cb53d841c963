"""Report queries on a real ledger: breakdowns in local time, top users, spend against caps, forecasts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.usage.helpers import create_org, make_event, store_events
from usage import reports

INST = "stateu"
CHI = ZoneInfo("America/Chicago")
M = 1_000_000  # the spec's amounts are currency units; the ledger holds micro-units

# The spec's worked example (quota-semantics section 7), monthly, metric cost.
TREE = [
    ("stateu", None, "university", "State University"),
    ("eng", "stateu", "college", None),
    ("cs", "eng", "department", None),
    ("ada", "cs", "faculty", None),
    ("ada-teaching", "ada", "teaching", None),
    ("cs101", "ada-teaching", "course", None),
    ("cs102", "ada-teaching", "course", None),
    ("ada-research", "ada", "research", None),
    ("hum", "stateu", "college", None),
]
PATHS = {
    "cs101": ["cs101", "ada-teaching", "ada", "cs", "eng", "stateu"],
    "cs102": ["cs102", "ada-teaching", "ada", "cs", "eng", "stateu"],
    "ada-research": ["ada-research", "ada", "cs", "eng", "stateu"],
}
NOV = datetime(2026, 11, 1, 5, tzinfo=UTC)  # local midnight, Nov 1, Chicago (CDT ends Nov 1 at 02:00)


def _charge(seq: int, user: str, unit: str, amount: int, at: datetime, **kw: object):
    return make_event(
        INST, seq, user_id=user, unit_id=unit, path=PATHS[unit], cost_micro=amount * M, ended_at=at,
        purpose="research" if unit == "ada-research" else "teaching", **kw,
    )  # fmt: skip


@pytest.fixture
def example(fresh_pg_url: str) -> list:
    create_org(fresh_pg_url, INST, TREE, tz="America/Chicago")
    t = NOV + timedelta(days=2)
    events = [
        _charge(1, "s1", "cs101", 15, t, model_id="qwen", provider_id="campus"),  # row 1
        _charge(3, "s2", "cs102", 285, t + timedelta(hours=1), model_id="qwen", provider_id="campus"),  # row 3
        _charge(5, "r1", "ada-research", 500, t + timedelta(hours=2), model_id="gpt", provider_id="openai"),  # 5
        _charge(6, "r1", "ada-research", 100, t + timedelta(hours=3), model_id="gpt", provider_id="openai",
                extras_paid=[{"extra_id": "nsf-123", "unit_id": "ada-research", "amount": 100 * M}]),  # row 6
        # Refusals (rows 2, 4) cost nothing.
        _charge(2, "s1", "cs101", 0, t + timedelta(hours=4), status="refused", binding_unit="cs101"),
        _charge(4, "s3", "cs101", 0, t + timedelta(hours=5), status="refused", binding_unit="ada-teaching"),
    ]  # fmt: skip
    store_events(fresh_pg_url, events)
    return events


async def test_spend_against_caps_follows_the_worked_example(example: list, db_session: AsyncSession) -> None:
    caps = {
        "stateu": 10_000 * M, "eng": 4_000 * M, "cs": 1_000 * M, "ada": None, "ada-teaching": 300 * M,
        "cs101": 200 * M, "cs102": None, "ada-research": 500 * M, "hum": 1_000 * M,
    }  # fmt: skip
    units = [u for u, *_ in TREE]
    got = {
        c.unit_id: (c.spent // M, None if c.remaining is None else c.remaining // M)
        for c in await reports.spend_against_caps(
            db_session, INST, units, NOV, NOV + timedelta(days=30), caps
        )
    }
    # From the spec: nsf-123 pays row 6, so ada-research stays at 500 and "cs up stays 800".
    assert got == {
        "stateu": (800, 9_200), "eng": (800, 3_200), "cs": (800, 200), "ada": (800, None),
        "ada-teaching": (300, 0), "cs101": (15, 185), "cs102": (285, None), "ada-research": (500, 0),
        "hum": (0, 1_000),
    }  # fmt: skip


async def test_subtree_usage_separates_gross_cost_from_what_counts_against_caps(
    example: list, db_session: AsyncSession
) -> None:
    rows = {
        u.unit_id: u
        for u in await reports.subtree_usage(
            db_session, INST, ["cs", "ada-research", "cs101"], NOV, NOV + timedelta(days=30)
        )
    }
    assert (rows["cs"].cost_micro, rows["cs"].allocation_cost_micro, rows["cs"].extras_cost_micro) == (
        900 * M, 800 * M, 100 * M,
    )  # fmt: skip
    assert rows["cs"].requests == 6
    assert rows["ada-research"].allocation_cost_micro == 500 * M
    assert rows["cs101"].requests == 3 and rows["cs101"].cost_micro == 15 * M


async def test_breakdowns_by_model_provider_purpose_and_local_day(
    example: list, db_session: AsyncSession
) -> None:
    everything = [u for u, *_ in TREE]
    end = NOV + timedelta(days=30)
    by_model = await reports.usage_report(
        db_session, INST, everything, NOV, end, group_by=["model", "provider"]
    )
    assert {(r.keys["model"], r.keys["provider"]): r.cost_micro // M for r in by_model} == {
        ("gpt", "openai"): 600,
        ("qwen", "campus"): 300,
        ("model1", "campus-vllm"): 0,
        ("model2", "campus-vllm"): 0,
    }
    by_purpose = await reports.usage_report(db_session, INST, everything, NOV, end, group_by=["purpose"])
    assert {r.keys["purpose"]: r.cost_micro // M for r in by_purpose} == {"research": 600, "teaching": 300}
    daily = await reports.usage_report(db_session, INST, everything, NOV, end, group_by=[], bucket="day")
    # Nov 3, 05:00..10:00 UTC is Nov 2 23:00 .. Nov 3 04:00 in Chicago (CST, UTC-6 after Nov 1).
    assert [(r.bucket, r.requests, r.cost_micro // M) for r in daily] == [
        (datetime(2026, 11, 2, tzinfo=CHI), 1, 15),
        (datetime(2026, 11, 3, tzinfo=CHI), 5, 885),
    ]
    monthly = await reports.usage_report(
        db_session, INST, everything, NOV, end, group_by=["unit"], bucket="month"
    )
    assert {(r.keys["unit"], r.bucket): r.cost_micro // M for r in monthly} == {
        ("cs101", datetime(2026, 11, 1, tzinfo=CHI)): 15,
        ("cs102", datetime(2026, 11, 1, tzinfo=CHI)): 285,
        ("ada-research", datetime(2026, 11, 1, tzinfo=CHI)): 600,
    }


async def test_reports_never_leave_the_callers_subtree(example: list, db_session: AsyncSession) -> None:
    end = NOV + timedelta(days=30)
    rows = await reports.usage_report(db_session, INST, ["cs101", "cs102"], NOV, end, group_by=["user"])
    assert {r.keys["user"] for r in rows} == {"s1", "s2", "s3"}
    users = await reports.top_users(db_session, INST, ["cs101", "cs102"], NOV, end)
    assert [(u.user_id, u.cost_micro // M) for u in users] == [("s2", 285), ("s1", 15), ("s3", 0)]
    everyone = await reports.top_users(db_session, INST, [u for u, *_ in TREE], NOV, end, limit=1)
    assert [(u.user_id, u.requests, u.cost_micro // M) for u in everyone] == [("r1", 2, 600)]


async def test_unit_forecast_from_the_ledger(fresh_pg_url: str, db_session: AsyncSession) -> None:
    create_org(fresh_pg_url, INST, TREE, tz="America/Chicago")
    today = date(2026, 11, 18)
    events = []
    seq = 0
    for back in range(1, 120):
        day = today - timedelta(days=back)
        # One 10.00 request a day at local noon in cs101; ada-research spends 4.00 and an extra pays 1.00 of it.
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=CHI).astimezone(UTC)
        events.append(_charge(seq := seq + 1, "s1", "cs101", 10, noon))
        events.append(
            _charge(seq := seq + 1, "r1", "ada-research", 4, noon,
                    extras_paid=[{"extra_id": "nsf-123", "unit_id": "ada-research", "amount": 1 * M}])
        )  # fmt: skip
    store_events(fresh_pg_url, events)
    result = {
        f.unit_id: f.forecast
        for f in await reports.forecast_units(
            db_session, INST, ["cs101", "ada-research", "cs"], date(2026, 11, 1), date(2026, 12, 1),
            {"cs101": 250 * M, "ada-research": 200 * M}, today=today,
        )
    }  # fmt: skip
    cs101 = result["cs101"]
    assert cs101.spent == 17 * 10 * M
    assert cs101.projected == 30 * 10 * M  # nothing yet today: the whole day is ahead
    assert cs101.exhaustion == date(2026, 11, 25)  # 10/day reaches 250 on day 25
    assert cs101.seasonal  # a course: fitted with a weekday profile (flat here)
    assert cs101.mape == 0.0
    research = result["ada-research"]
    assert research.spent == 17 * 3 * M  # what the extra paid does not count against the unit's cap
    assert research.projected == 30 * 3 * M
    assert research.exhaustion is None
    assert not research.seasonal
    assert result["cs"].projected == 30 * 13 * M
    assert result["cs"].cap is None
