"""Later files: a delta changes only what it names, a bulk file replaces its set (enrollments left out
end), `org import` of the institution file keeps what the roster made, and a rostered student who signs in
is the user the roster made (issue 18)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from admin_api.sso.mapping import Identity
from admin_api.sso.provisioning import provision
from core.db import make_async_engine, session_factory
from tests.oneroster.conftest import enrol, execute, query, run_cli, small_set, write_set


def _members(url: str, inst: str) -> dict[tuple[str, str], tuple[str, datetime | None]]:
    rows = query(url, "select unit_id, user_id, role, ends_at from membership where institution_id = %s "
                 "and source = 'roster'", inst)  # fmt: skip
    return {(u, p): (r, e) for u, p, r, e in rows}


def _import(url: str, inst: str, folder: Path) -> str:
    done = run_cli(url, "roster", "import", "--institution", inst, str(folder))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_delta_ends_the_enrollment_it_drops_and_adds_one_to_what_earlier_files_said(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    _import(pg_url, inst, write_set(tmp_path / "bulk", small_set()))
    before = _members(pg_url, inst)
    delta = {"enrollments.csv": [{"sourcedId": "e3", "status": "tobedeleted"},  # bob leaves cs101-a
                                 enrol("e8", "cs201-a", "u-aide", "student")]}  # fmt: skip
    folder = write_set(tmp_path / "delta", delta, mode="delta")
    t0 = datetime.now(UTC)
    out = _import(pg_url, inst, folder)
    assert "1 memberships added" in out and "1 memberships ended" in out, out
    after = _members(pg_url, inst)
    ended = after.pop(("cs101-a", "bob"))
    assert (
        ended[0] == "student"
        and ended[1] is not None
        and t0 - timedelta(seconds=5) < ended[1] <= datetime.now(UTC)
    )
    assert after.pop(("cs201-a", "aria"))[0] == "student"  # class, user and term from the earlier bulk set
    before_bob = before.pop(("cs101-a", "bob"))
    assert after == before  # nothing else changed
    assert "no changes" in _import(pg_url, inst, folder)  # the same delta again
    again = _import(pg_url, inst, tmp_path / "bulk")  # the first bulk set names e3 (and not e8) again
    assert "1 memberships changed" in again and "1 memberships ended" in again, again
    back = _members(pg_url, inst)
    assert back[("cs101-a", "bob")] == before_bob and back[("cs201-a", "aria")][1] is not None


def test_a_bulk_file_without_an_enrollment_ends_it_and_a_removed_class_is_archived(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    _import(pg_url, inst, write_set(tmp_path / "one", small_set()))
    rows = small_set()
    rows["enrollments.csv"] = [e for e in rows["enrollments.csv"] if e["sourcedId"] not in ("e5", "e6")]
    rows["classes.csv"] = rows["classes.csv"][:1]  # cs201-a is gone
    out = _import(pg_url, inst, write_set(tmp_path / "two", rows))
    assert "2 memberships ended" in out and "1 units updated" in out, out
    now = datetime.now(UTC)
    members = _members(pg_url, inst)
    assert all(
        ends is not None and ends <= now for (unit, _), (_, ends) in members.items() if unit == "cs201-a"
    )
    assert query(pg_url, "select archived from unit where institution_id = %s and id = 'cs201-a'", inst) == [
        (True,)
    ]
    assert "no changes" in _import(pg_url, inst, tmp_path / "two")


def test_org_import_of_the_institution_file_keeps_roster_units_and_memberships(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, org_file = institution
    _import(pg_url, inst, write_set(tmp_path / "set", small_set()))
    units = query(pg_url, "select id, parent_id, archived, source from unit where institution_id = %s "
                  "and source = 'roster' order by id", inst)  # fmt: skip
    members = _members(pg_url, inst)
    done = run_cli(pg_url, "org", "import", str(org_file))
    assert done.returncode == 0, done.stderr
    assert "archive unit" not in done.stdout and "remove membership" not in done.stdout, done.stdout
    assert query(pg_url, "select id, parent_id, archived, source from unit where institution_id = %s "
                 "and source = 'roster' order by id", inst) == units  # fmt: skip
    assert _members(pg_url, inst) == members and len(members) == 6
    exported = run_cli(pg_url, "org", "export", "--institution", inst)
    assert exported.returncode == 0, exported.stderr
    assert "cs101-a" not in exported.stdout and "subject_domain: stateu.edu" in exported.stdout
    assert "no changes" in _import(pg_url, inst, tmp_path / "set")


def test_a_rostered_student_who_signs_in_is_the_user_the_roster_made(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    _import(pg_url, inst, write_set(tmp_path / "set", small_set()))

    async def sign_in() -> tuple[str, bool]:
        engine = make_async_engine(pg_url, pool_size=1)
        try:
            async with session_factory(engine)() as session, session.begin():
                done = await provision(session, inst, Identity(subject="bob@stateu.edu", email="bob@stateu.edu",
                                                               name="Bob Ng"), method="saml", create_users=True)  # fmt: skip
                return done.user_id, done.created
        finally:
            await engine.dispose()

    assert asyncio.run(sign_in()) == ("bob", False)
    assert query(pg_url, "select count(*) from app_user where institution_id = %s", inst) == [(5,)]
    assert ("cs101-a", "bob") in _members(pg_url, inst)  # the IdP asserted no courses: roster rows stay


def test_roles_disabled_people_future_enrollments_and_other_sources_follow_the_rules(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    rows = small_set()
    rows["users.csv"][3]["enabledUser"] = "false"  # cho: disabled, so no membership
    later = (datetime.now(UTC) + timedelta(days=9)).date().isoformat()
    rows["enrollments.csv"] += [
        enrol("e7", "cs201-a", "u-teach", "administrator"),  # skipped: no EduAiQ counterpart
        {**enrol("e8", "cs201-a", "u-aide", "student"), "beginDate": later},  # not begun yet
        enrol("e9", "cs101-a", "u-bob", "teacher"),  # bob twice in cs101-a: the higher role
    ]
    out = _import(pg_url, inst, write_set(tmp_path / "set", rows))
    assert "skipped 1 enrollment(s): role administrator" in out and "user not enabled" in out, out
    assert "skipped 1 enrollment(s): not begun yet" in out, out
    members = _members(pg_url, inst)
    assert ("cs201-a", "cho") not in members and ("cs201-a", "aria") not in members
    assert ("cs201-a", "tkay") not in members and members[("cs101-a", "bob")][0] == "instructor"
    # an admin added aria to cs201-a through the API meanwhile: the roster leaves that membership alone
    execute(pg_url, "insert into membership (institution_id, unit_id, user_id, role, source) "
            "values (%s, 'cs201-a', 'aria', 'ta', 'api')", inst)  # fmt: skip
    rows["users.csv"][3]["enabledUser"] = "true"
    del rows["enrollments.csv"][-2]["beginDate"]  # aria's enrollment has begun
    again = _import(pg_url, inst, write_set(tmp_path / "again", rows))
    assert "1 memberships added" in again and "membership held by another source" in again, again
    assert _members(pg_url, inst)[("cs201-a", "cho")][0] == "student"
    assert query(pg_url, "select role, source, ends_at from membership where institution_id = %s "
                 "and unit_id = 'cs201-a' and user_id = 'aria'", inst) == [("ta", "api", None)]  # fmt: skip
