"""A student the registrar drops, or whose term ends, loses access within seconds on every gateway process
(issue 18: OneRoster import).

Real `eduaiq gateway` processes (two, of two workers each) on PostgreSQL, Redis and Kafka, the demo
university with a `roster:` section: `eduaiq roster import` makes class cs101-a and its enrollments; the
student issues a key for that class through the admin API (as they would in the dashboard) and it answers
200; then a delta file drops (`tobedeleted`) that enrollment, or a re-import says the term ended yesterday,
and every process must refuse the key (401) within 10 s. EDUAIQ_MEMBERSHIP_GRACE_SECONDS is 0 here (the
default): with a grace the key would work that much longer after the membership's end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from admin_api.app import create_app
from core.settings import Settings
from tests.gateway.harness import Stack, gateway_stack
from tests.oneroster.conftest import course, enrol, klass, org, person, session, write_set
from tests.people.test_leavers import _everywhere

ADMIN = "http://admin.test"


def _with_roster(doc: dict[str, Any]) -> None:
    doc["roster"] = {"orgs": {"school-sci": "cs"}, "subject_domain": "demo.edu"}


@pytest.fixture
def stack(pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, gateways=2, workers=2,
                       mutate=_with_roster, extra_env={"EDUAIQ_MEMBERSHIP_GRACE_SECONDS": "0"}) as s:  # fmt: skip
        yield s


def _roster(term_end_days: int) -> dict[str, list[dict[str, str]]]:
    """The term ends `term_end_days` from today in the institution's zone (the demo's, America/Chicago)."""
    today = datetime.now(ZoneInfo("America/Chicago")).date()
    return {
        "orgs.csv": [org("school-sci", "School of Science")],
        "academicSessions.csv": [session("fall", today - timedelta(days=60), today + timedelta(days=term_end_days))],
        "courses.csv": [course("cs101", "school-sci")],
        "classes.csv": [klass("cs101-a", "Intro to Programming A", "cs101", "school-sci", "fall")],
        "users.csv": [person("u-dana", "dana", "Dana", "Reyes", "dana@demo.edu"),
                      person("u-turing", "turing", "Alan", "Turing", "turing@demo.edu")],
        "enrollments.csv": [enrol("e-dana", "cs101-a", "u-dana", "student", school="school-sci"),
                            enrol("e-turing", "cs101-a", "u-turing", "teacher", school="school-sci")],
    }  # fmt: skip


def _import(stack: Stack, folder: Path) -> str:
    done = stack.cli("roster", "import", "--institution", stack.institution, str(folder))
    assert done.returncode == 0, done.stderr
    return done.stdout


def _student_key(stack: Stack, user: str, unit: str) -> str:
    """The student signs in (dev login) and creates a key for their class, as in the dashboard."""

    async def issue() -> str:
        settings = Settings(
            database_url=stack.db_url, redis_url=stack.env["EDUAIQ_REDIS_URL"], public_base_url=ADMIN
        )
        app = create_app(settings, dev_login=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ADMIN) as client:
            signed_in = await client.get(
                "/auth/dev/login", params={"user": user, "institution": stack.institution}
            )
            assert signed_in.status_code in (200, 302, 303, 307), signed_in.text
            client.headers["X-CSRF-Token"] = client.cookies["eduaiq_csrf"]
            created = await client.post("/api/v1/keys", json={"unit_id": unit, "name": "gpt4all"})
            assert created.status_code == 201, created.text
            await app.state.eduaiq_admin.close()
            return str(created.json()["key"])

    return asyncio.run(issue())


def test_a_student_dropped_by_a_delta_file_is_refused_everywhere(stack: Stack, tmp_path: Path) -> None:
    out = _import(stack, write_set(tmp_path / "bulk", _roster(term_end_days=40)))
    assert "1 units created" in out and "1 users created" in out and "1 existing people linked" in out, out
    key = _student_key(stack, "dana", "cs101-a")
    _everywhere(stack, key, 200)
    delta = write_set(tmp_path / "delta", {"enrollments.csv": [{"sourcedId": "e-dana", "status": "tobedeleted"}]},
                      mode="delta")  # fmt: skip
    assert "1 memberships ended" in _import(stack, delta)
    assert "membership of cs101-a, which ended on" in _everywhere(stack, key, 401)


def test_a_term_that_ended_yesterday_stops_its_students_keys_everywhere(stack: Stack, tmp_path: Path) -> None:
    _import(stack, write_set(tmp_path / "term", _roster(term_end_days=40)))
    key = _student_key(stack, "dana", "cs101-a")
    _everywhere(stack, key, 200)
    ended = _import(stack, write_set(tmp_path / "ended", _roster(term_end_days=-1)))  # endDate: yesterday
    assert "2 memberships changed" in ended, ended
    assert "membership of cs101-a, which ended on" in _everywhere(stack, key, 401)
