"""Usage reports, forecasts and exports through the API, over ledger rows written by the usage package."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import psycopg2

from tests.admin_api.conftest import Env
from usage.events import UsageEvent
from usage.ledger import store
from usage.periods import month_bounds, previous_month

USD = 1_000_000


def event(env: Env, n: int, user: str, path: list[str], cost: int, at: datetime) -> UsageEvent:
    return UsageEvent(request_id=f"r{n}", institution_id=env.inst, started_at=at - timedelta(seconds=1), ended_at=at,
                      user_id=user, unit_id=path[0], path=path, provider_id="campus-vllm", model_id="llama-3.1-8b",
                      input_tokens=100 * n, output_tokens=10 * n, cost_micro=cost, status="ok")  # fmt: skip


def write_ledger(pg_url: str, events: list[UsageEvent]) -> None:
    conn = psycopg2.connect(pg_url)
    with conn, conn.cursor() as cur:
        store(cur, events)
    conn.close()


TEACHING = ["ada-teaching", "ada", "cs", "eng", "stateu"]


def seed(env: Env, pg_url: str) -> str:
    now = datetime.now(UTC)
    last = previous_month(now, "America/Chicago")
    in_last = month_bounds(last, "America/Chicago")[0] + timedelta(days=3)
    write_ledger(pg_url, [
        event(env, 1, "s1", ["cs101", *TEACHING], 3 * USD, now),
        event(env, 2, "s3", ["cs101", *TEACHING], 2 * USD, now),
        event(env, 3, "s2", ["cs102", *TEACHING], 5 * USD, now),
        event(env, 4, "s1", ["cs101", *TEACHING], 7 * USD, in_last),
        event(env, 5, "r1", ["ada-research", "ada", "cs", "eng", "stateu"], 11 * USD, in_last),
    ])  # fmt: skip
    return last


async def test_reports_of_a_course_and_of_oneself(env: Env, pg_url: str) -> None:
    seed(env, pg_url)
    admin = await env.login("csadmin")
    report = await admin.get("/api/v1/units/cs101/usage", params={"group_by": ["user"]})
    assert report.status_code == 200, report.text
    assert {r["keys"]["user"]: r["cost_micro"] for r in report.json()["rows"]} == {
        "s1": 3 * USD,
        "s3": 2 * USD,
    }

    teaching = await admin.get("/api/v1/units/ada-teaching/usage", params={"group_by": ["unit", "model"]})
    by_unit = {r["keys"]["unit"]: r["cost_micro"] for r in teaching.json()["rows"]}
    assert by_unit == {"cs101": 5 * USD, "cs102": 5 * USD}

    instructor = await env.login("prof-ada")
    top = (await instructor.get("/api/v1/units/cs101/usage/top-users")).json()
    assert [(u["user_id"], u["cost_micro"]) for u in top] == [("s1", 3 * USD), ("s3", 2 * USD)]

    student = await env.login("s1")
    mine = (await student.get("/api/v1/me/usage")).json()["rows"]
    assert [(r["keys"]["user"], r["keys"]["unit"], r["cost_micro"]) for r in mine] == [
        ("s1", "cs101", 3 * USD)
    ]
    assert (await student.get("/api/v1/units/cs101/usage")).status_code == 403

    backwards = await admin.get("/api/v1/units/cs101/usage", params={"start": "2026-11-10T00:00:00Z",
                                                                     "end": "2026-11-01T00:00:00Z"})  # fmt: skip
    assert backwards.status_code == 422


async def test_finance_exports_a_closed_month_by_token(env: Env, pg_url: str) -> None:
    last = seed(env, pg_url)
    script = await env.token_client("fin", ["export:read"])
    response = await script.get("/api/v1/units/eng/export", params={"period": last, "format": "csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {(r["unit_id"], r["cost"]) for r in rows} == {("cs101", "7.000000"), ("ada-research", "11.000000")}
    again = await script.get("/api/v1/units/eng/export", params={"period": last, "format": "csv"})
    assert again.content == response.content
    focus = await script.get("/api/v1/units/eng/export", params={"period": last, "format": "focus"})
    assert focus.status_code == 200 and "BilledCost" in focus.text.splitlines()[0]
    bad = await script.get("/api/v1/units/eng/export", params={"period": "2026-13"})
    assert bad.status_code == 422
    hum = await script.get("/api/v1/units/hum/export", params={"period": last})
    assert hum.status_code == 403


async def test_forecast_names_the_caps(env: Env, pg_url: str) -> None:
    seed(env, pg_url)
    admin = await env.login("csadmin")
    response = await admin.get("/api/v1/units/cs/usage/forecast")
    assert response.status_code == 200, response.text
    by_unit = {f["unit_id"]: f for f in response.json()}
    assert set(by_unit) == {"cs", "ada"}
    assert by_unit["cs"]["cap"] == 1000 * USD and by_unit["ada"]["cap"] is None
    assert by_unit["cs"]["spent"] == 10 * USD  # this month's allocation spend below cs
