#!/usr/bin/env python3
"""How long `eduaiq roster import` takes for a large university's OneRoster set, and its no-op re-import.

    python bench/oneroster.py [--users 20000] [--classes 2000] [--enrollments 60000] [--keep DIR]

Generates a deterministic OneRoster 1.2 CSV set (seeded: the same files every run): 11 orgs (a district
and 10 schools), 4 terms, 500 courses, CLASSES classes, USERS people (one in twenty a teacher) and
ENROLLMENTS enrollments (a teacher per class, an aide in one class in ten, the rest students spread over
the classes). Imports it into a fresh database on a real PostgreSQL server (EDUAIQ_DATABASE_URL's server
when set, else the machine's on 5432, else an embedded one started here, as bench/stack.py does), under an
institution whose `roster:` section maps the schools to departments. Prints the time of the first import
and of the re-import of the same set (which must write nothing), and the row counts. The time is the
import itself (read, check, plan, write, commit); the Redis budget compile the CLI runs afterwards is not
in it. Nothing here asserts a number: it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from admin_api.oneroster import import_roster, read_set  # noqa: E402
from admin_api.oneroster.spec import FILES  # noqa: E402
from admin_api.orgfile import apply_org, parse_document  # noqa: E402
from cli.services.postgres import SUPERUSER, ensure_database, start_postgres  # noqa: E402
from cli.services.process import Child, free_port, port_open  # noqa: E402
from core.db import make_async_engine, session_factory  # noqa: E402
from core.migrate import upgrade  # noqa: E402

SCHOOLS = 10
HEADERS = {f.name: f.columns for f in FILES}
INSTITUTION = "bench-roster"


def generate(folder: Path, users: int, classes: int, enrollments: int, seed: int = 18) -> None:
    """The set, written as a SIS writes a bulk export (every file bulk)."""
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, str]]] = {name: [] for name in HEADERS}
    rows["orgs.csv"].append({"sourcedId": "district", "name": "Bench University", "type": "district"})
    for s in range(SCHOOLS):
        rows["orgs.csv"].append({"sourcedId": f"school-{s}", "name": f"School {s}", "type": "school",
                                 "parentSourcedId": "district"})  # fmt: skip
    terms = [("fall-2026", "2026-08-24", "2026-12-18"), ("spring-2027", "2027-01-11", "2027-05-07"),
             ("summer-2027", "2027-05-17", "2027-08-06"), ("year-2027", "2026-08-24", "2027-08-06")]  # fmt: skip
    for sid, start, end in terms:
        rows["academicSessions.csv"].append({"sourcedId": sid, "title": sid, "type": "term", "startDate": start,
                                             "endDate": end, "schoolYear": "2027"})  # fmt: skip
    for c in range(500):
        rows["courses.csv"].append({"sourcedId": f"course-{c}", "title": f"Course {c}",
                                    "orgSourcedId": f"school-{c % SCHOOLS}"})  # fmt: skip
    for k in range(classes):
        course = k % 500
        rows["classes.csv"].append({"sourcedId": f"class-{k}", "title": f"Course {course} section {k // 500}",
                                    "courseSourcedId": f"course-{course}", "classCode": f"C{course}-{k // 500}",
                                    "classType": "scheduled", "schoolSourcedId": f"school-{course % SCHOOLS}",
                                    "termSourcedIds": terms[k % 3][0]})  # fmt: skip
    teachers = max(1, users // 20)
    for u in range(users):
        role = "t" if u < teachers else "s"
        rows["users.csv"].append({"sourcedId": f"user-{u}", "enabledUser": "true", "username": f"{role}{u:06d}",
                                  "givenName": f"Given{u}", "familyName": f"Family{u}",
                                  "email": f"{role}{u:06d}@bench.edu"})  # fmt: skip
    pairs: set[tuple[int, int]] = set()

    def add(k: int, u: int, role: str) -> None:
        if (k, u) not in pairs and len(pairs) < enrollments:
            pairs.add((k, u))
            rows["enrollments.csv"].append({"sourcedId": f"enr-{len(pairs)}", "classSourcedId": f"class-{k}",
                                            "schoolSourcedId": f"school-{(k % 500) % SCHOOLS}",
                                            "userSourcedId": f"user-{u}", "role": role})  # fmt: skip

    for k in range(classes):
        add(k, k % teachers, "teacher")
    for k in range(0, classes, 10):
        add(k, rng.randrange(teachers, users), "aide")
    while len(pairs) < enrollments:
        add(rng.randrange(classes), rng.randrange(teachers, users), "student")
    folder.mkdir(parents=True, exist_ok=True)
    for name, header in HEADERS.items():
        with (folder / name).open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows([row.get(col, "") for col in header] for row in rows[name])
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([["propertyName", "value"], ["manifest.version", "1.0"],
                                   ["oneroster.version", "1.2"], ["source.systemName", "bench"],
                                   *[[f"file.{n.removesuffix('.csv')}", "bulk"] for n in HEADERS]])  # fmt: skip


def institution_file() -> dict[str, object]:
    departments = [
        {"id": f"dept-{s}", "kind": "department", "budget": {"cost": {"percent": 10}}} for s in range(SCHOOLS)
    ]
    return {
        "institution": {"id": INSTITUTION, "name": "Bench University", "currency": "USD", "timezone": "America/Chicago"},
        "units": [{"id": INSTITUTION, "kind": "university", "budget": {"period": "month", "cost": {"fixed": 100000}},
                   "children": departments}],
        "roster": {"orgs": {f"school-{s}": f"dept-{s}" for s in range(SCHOOLS)}, "subject_domain": "bench.edu"},
    }  # fmt: skip


async def run(url: str, folder: Path) -> None:
    engine = make_async_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            await apply_org(session, parse_document(institution_file()))
        for label in ("first import", "re-import (same set)"):
            started = time.perf_counter()
            files = read_set(folder)
            async with session_factory(engine)() as session, session.begin():
                result = await import_roster(session, INSTITUTION, files)
            elapsed = time.perf_counter() - started
            print(f"{label}: {elapsed:.2f} s  ({result.summary()})")
        async with session_factory(engine)() as session:
            from sqlalchemy import text

            for table, where in (("unit", "source = 'roster'"), ("app_user", "source = 'roster'"),
                                 ("membership", "source = 'roster'"), ("roster_record", "true"),
                                 ("audit_entry", "action = 'roster.import'")):  # fmt: skip
                n = (await session.execute(text(f"select count(*) from {table} where institution_id = :i and {where}"),
                                           {"i": INSTITUTION})).scalar_one()  # fmt: skip
                print(f"  {table:14} {n:>7}  ({where})")
    finally:
        await engine.dispose()


def drop_database(url: str) -> None:
    import psycopg2
    from psycopg2.extensions import parse_dsn

    dsn = parse_dsn(url.rsplit("/", 1)[0] + "/postgres")
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'drop database if exists "{url.rsplit("/", 1)[1]}" with (force)')
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=2_000)
    parser.add_argument("--enrollments", type=int, default=60_000)
    parser.add_argument("--keep", type=Path, help="write the set here and keep it")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eduaiq-roster-bench-"))
    folder = args.keep or tmp / "set"
    children: list[Child] = []
    try:
        generate(folder, args.users, args.classes, args.enrollments)
        sizes = {p.name: sum(1 for _ in p.open()) - 1 for p in sorted(folder.glob("*.csv"))}
        print("set: " + ", ".join(f"{name} {n}" for name, n in sizes.items() if name != "manifest.csv"))
        explicit = os.environ.get("EDUAIQ_DATABASE_URL")
        if explicit:
            server = explicit.rsplit("/", 1)[0]
        elif port_open("127.0.0.1", 5432):
            server = "postgresql://postgres@127.0.0.1:5432"
        else:
            port = free_port()
            children.append(start_postgres(tmp, port))
            server = f"postgresql://{SUPERUSER}@127.0.0.1:{port}"
        url = f"{server}/eduaiq_bench_roster_{uuid.uuid4().hex[:8]}"
        ensure_database(url)
        upgrade(url)
        print(f"database: {url}")
        try:
            asyncio.run(run(url, folder))
        finally:
            drop_database(url)
    finally:
        for child in children:
            child.stop()


if __name__ == "__main__":
    main()
