"""`eduaiq roster import` against a real database: a registrar's OneRoster set becomes course units, users
and memberships ending with the term; a second import of the same set writes nothing (issue 18)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.oneroster.conftest import TERM_END, TODAY, query, run_cli, small_set, write_set

CHICAGO = ZoneInfo("America/Chicago")


def _close_of(day: date) -> datetime:
    """The end of a local day in the institution's zone (America/Chicago), in UTC."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=CHICAGO).astimezone(UTC)


def test_a_small_set_imports_and_a_second_import_writes_nothing(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    roster = write_set(tmp_path / "set", small_set())
    done = run_cli(pg_url, "roster", "import", "--institution", inst, str(roster))
    assert done.returncode == 0, done.stderr
    assert "2 units created" in done.stdout and "4 users created" in done.stdout, done.stdout
    assert "6 memberships added" in done.stdout and "1 existing people linked" in done.stdout, done.stdout

    units = query(pg_url, "select id, parent_id, kind, name, source from unit where institution_id = %s "
                  "and source = 'roster' order by id", inst)  # fmt: skip
    assert units == [("cs101-a", "eng", "course", "Intro to Programming A", "roster"),
                     ("cs201-a", "eng", "course", "Data Structures A", "roster")]  # fmt: skip
    users = query(pg_url, "select id, email, name, sso_subject, source, external_id from app_user "
                  "where institution_id = %s order by id", inst)  # fmt: skip
    assert users == [
        ("alice", "alice@stateu.edu", "Alice Smith", "alice@stateu.edu", "file", None),  # linked, not copied
        ("aria", "aria@stateu.edu", "Aria Lee", "aria@stateu.edu", "roster", "u-aide"),
        ("bob", "bob@stateu.edu", "Bob Ng", "bob@stateu.edu", "roster", "u-bob"),
        ("cho", "cho@stateu.edu", "Cho Park", "cho@stateu.edu", "roster", "u-cho"),
        ("tkay", "tkay@stateu.edu", "Tess Kay", "tkay@stateu.edu", "roster", "u-teach"),
    ]
    members = query(pg_url, "select unit_id, user_id, role, ends_at, source from membership "
                    "where institution_id = %s and source = 'roster' order by 1, 2", inst)  # fmt: skip
    term = _close_of(TERM_END)
    assert members == [
        ("cs101-a", "alice", "student", term, "roster"),
        ("cs101-a", "aria", "ta", term, "roster"),
        ("cs101-a", "bob", "student", term, "roster"),
        ("cs101-a", "tkay", "instructor", term, "roster"),
        (
            "cs201-a",
            "bob",
            "student",
            _close_of(TODAY + timedelta(days=10)),
            "roster",
        ),  # the enrollment's end
        ("cs201-a", "cho", "student", term, "roster"),
    ]
    audit = query(pg_url, "select actor, action, after from audit_entry where institution_id = %s "
                  "and action = 'roster.import'", inst)  # fmt: skip
    assert len(audit) == 1 and audit[0][:2] == ("roster-import", "roster.import")
    counts = audit[0][2]
    assert (counts["units_created"], counts["users_created"], counts["memberships_added"]) == (2, 4, 6)
    assert counts["rows"]["enrollments.csv"] == 6 and counts["linked_users"] == 1

    kept = query(
        pg_url, "select data::text from roster_record where institution_id = %s and kind = 'user'", inst
    )
    assert len(kept) == 5 and not any(
        "@" in d or "Bob" in d for (d,) in kept
    )  # personal fields: the user row's

    again = run_cli(pg_url, "roster", "import", "--institution", inst, str(roster))
    assert again.returncode == 0, again.stderr
    assert "no changes" in again.stdout, again.stdout
    assert len(query(pg_url, "select 1 from audit_entry where institution_id = %s and action = 'roster.import'",
                     inst)) == 1  # fmt: skip
