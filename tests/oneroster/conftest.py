"""A small institution with a `roster:` section, and OneRoster CSV sets written the way a SIS exports them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

TODAY = date.today()
TERM_END = TODAY + timedelta(days=40)

HEADERS = {
    "orgs.csv": ["sourcedId", "status", "dateLastModified", "name", "type", "identifier", "parentSourcedId"],
    "academicSessions.csv": ["sourcedId", "status", "dateLastModified", "title", "type", "startDate", "endDate",
                             "parentSourcedId", "schoolYear"],
    "courses.csv": ["sourcedId", "status", "dateLastModified", "schoolYearSourcedId", "title", "courseCode",
                    "grades", "orgSourcedId", "subjects", "subjectCodes"],
    "classes.csv": ["sourcedId", "status", "dateLastModified", "title", "grades", "courseSourcedId", "classCode",
                    "classType", "location", "schoolSourcedId", "termSourcedIds", "subjects", "subjectCodes",
                    "periods"],
    "users.csv": ["sourcedId", "status", "dateLastModified", "enabledUser", "username", "userIds", "givenName",
                  "familyName", "middleName", "identifier", "email", "sms", "phone", "agentSourcedIds", "grades",
                  "password", "userMasterIdentifier", "resourceSourcedIds", "preferredGivenName",
                  "preferredMiddleName", "preferredFamilyName", "primaryOrgSourcedId", "pronouns"],
    "enrollments.csv": ["sourcedId", "status", "dateLastModified", "classSourcedId", "schoolSourcedId",
                        "userSourcedId", "role", "primary", "beginDate", "endDate"],
}  # fmt: skip


def org(sid: str, name: str, kind: str = "school", parent: str = "") -> dict[str, str]:
    return {"sourcedId": sid, "name": name, "type": kind, "parentSourcedId": parent}


def session(sid: str, start: date, end: date) -> dict[str, str]:
    return {"sourcedId": sid, "title": sid, "type": "term", "startDate": start.isoformat(),
            "endDate": end.isoformat(), "schoolYear": str(end.year)}  # fmt: skip


def course(sid: str, school: str) -> dict[str, str]:
    return {"sourcedId": sid, "title": sid.upper(), "orgSourcedId": school}


def klass(sid: str, title: str, course_id: str, school: str, terms: str) -> dict[str, str]:
    return {"sourcedId": sid, "title": title, "courseSourcedId": course_id, "classCode": sid.upper(),
            "classType": "scheduled", "schoolSourcedId": school, "termSourcedIds": terms}  # fmt: skip


def person(sid: str, username: str, given: str, family: str, email: str = "") -> dict[str, str]:
    return {"sourcedId": sid, "enabledUser": "true", "username": username, "givenName": given,
            "familyName": family, "email": email}  # fmt: skip


def enrol(
    sid: str, cls: str, user: str, role: str, school: str = "school-eng", end: str = ""
) -> dict[str, str]:
    return {"sourcedId": sid, "classSourcedId": cls, "schoolSourcedId": school, "userSourcedId": user,
            "role": role, "endDate": end}  # fmt: skip


def small_set() -> dict[str, list[dict[str, str]]]:
    """Two classes of the engineering school, a teacher, an aide, three students (one already known)."""
    return {
        "orgs.csv": [org("district", "State University", "district"), org("school-eng", "Engineering", "school", "district")],
        "academicSessions.csv": [session("fall", TODAY - timedelta(days=60), TERM_END)],
        "courses.csv": [course("cs101", "school-eng"), course("cs201", "school-eng")],
        "classes.csv": [klass("cs101-a", "Intro to Programming A", "cs101", "school-eng", "fall"),
                        klass("cs201-a", "Data Structures A", "cs201", "school-eng", "fall")],
        "users.csv": [person("u-teach", "tkay", "Tess", "Kay", "tkay@stateu.edu"),
                      person("u-aide", "aria", "Aria", "Lee", "aria@stateu.edu"),
                      person("u-bob", "bob", "Bob", "Ng", "bob@stateu.edu"),
                      person("u-cho", "cho", "Cho", "Park", "cho@stateu.edu"),
                      person("u-alice", "alice", "Alice", "Smith", "alice@stateu.edu")],
        "enrollments.csv": [enrol("e1", "cs101-a", "u-teach", "teacher"), enrol("e2", "cs101-a", "u-aide", "aide"),
                            enrol("e3", "cs101-a", "u-bob", "student"), enrol("e4", "cs101-a", "u-alice", "student"),
                            enrol("e5", "cs201-a", "u-cho", "student"),
                            enrol("e6", "cs201-a", "u-bob", "student", end=(TODAY + timedelta(days=10)).isoformat())],
    }  # fmt: skip


def write_set(
    folder: Path,
    rows: dict[str, list[dict[str, str]]],
    mode: str = "bulk",
    modes: dict[str, str] | None = None,
) -> Path:
    """The files of `rows` (each a dict of column -> value; missing columns blank), with a manifest giving
    each `mode` (or `modes[file]`) and every other file absent."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = [["propertyName", "value"], ["manifest.version", "1.0"], ["oneroster.version", "1.2"]]
    for name, header in HEADERS.items():
        if name not in rows:
            manifest.append([f"file.{name.removesuffix('.csv')}", "absent"])
            continue
        file_mode = (modes or {}).get(name, mode)
        manifest.append([f"file.{name.removesuffix('.csv')}", file_mode])
        with (folder / name).open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            for row in rows[name]:
                values = (
                    {"status": "active", "dateLastModified": "2026-11-30T08:00:00Z"}
                    if file_mode == "delta"
                    else {}
                )
                writer.writerow([{**values, **row}.get(col, "") for col in header])
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows(manifest)
    return folder


def org_doc(inst: str, roster: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "institution": {"id": inst, "name": "State University", "currency": "USD", "timezone": "America/Chicago"},
        "units": [{"id": inst, "kind": "university", "budget": {"period": "month", "cost": {"fixed": 1000}},
                   "children": [{"id": "eng", "kind": "college", "budget": {"cost": {"percent": 50}},
                                 "children": [{"id": "eng-intro", "kind": "course",
                                               "members": [{"user": "alice", "role": "student"}]}]},
                                {"id": "general", "kind": "department"}]}],
        "users": [{"id": "alice", "email": "alice@stateu.edu", "name": "Alice Smith",
                   "sso_subject": "alice@stateu.edu"}],
        "roster": roster if roster is not None else {"orgs": {"school-eng": "eng"}, "subject_domain": "stateu.edu"},
    }  # fmt: skip


_REDIS: list[str] = []


@pytest.fixture(autouse=True, scope="session")
def _cli_redis(redis_url: str) -> None:
    _REDIS[:] = [redis_url]


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDUAIQ_DATABASE_URL": db_url, "EDUAIQ_REDIS_URL": _REDIS[0]}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


@pytest.fixture
def institution(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh institution (its own id in the run's database) imported from its file; (id, file)."""
    inst = "ro" + uuid.uuid4().hex[:10]
    path = tmp_path / f"{inst}.yaml"
    path.write_text(yaml.safe_dump(org_doc(inst)))
    done = run_cli(pg_url, "org", "import", str(path))
    assert done.returncode == 0, done.stderr
    yield inst, path


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def execute(url: str, sql: str, *args: Any) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
    finally:
        conn.close()
