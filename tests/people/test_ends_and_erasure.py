"""What a membership's end and an erasure must hold against: the admin API's own powers, the next import of
the institution file, a new SSO sign-in, a session already open, an instructor, and a day that starts at
01:00 (a review of issue 18's first slice found each of these open).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text, update
from sqlmodel import col, select

from admin_api.access import load_grants
from admin_api.orgfile.export import last_day
from admin_api.orgfile.parse import parse_document
from admin_api.orgfile.rows import membership_end
from admin_api.orgfile.sync import apply_org
from admin_api.people import PersonError, deprovision, erase, reinstate
from admin_api.sso.errors import SSOError
from admin_api.sso.mapping import Identity
from admin_api.sso.provisioning import provision
from core.models import AuditEntry, Membership, User
from core.models.access import erased_subject
from core.settings import Settings
from tests.admin_api.conftest import BASE_URL, Env, drop_env, make_env, stateu_document


@pytest.fixture
async def env(pg_url: str, redis_url: str) -> AsyncIterator[Env]:
    e = await make_env(Settings(database_url=pg_url, redis_url=redis_url, public_base_url=BASE_URL))
    try:
        yield e
    finally:
        await drop_env(e)


async def _end(env: Env, unit: str, user: str, at: datetime) -> None:
    async with env.db() as session, session.begin():
        await session.execute(
            update(Membership)
            .where(col(Membership.institution_id) == env.inst, col(Membership.unit_id) == unit)
            .where(col(Membership.user_id) == user)
            .values(ends_at=at)
        )


async def _leave_and_erase(env: Env, user: str) -> None:
    async with env.db() as session, session.begin():
        assert await deprovision(session, env.inst, user, "test")
    async with env.db() as session, session.begin():
        await erase(session, env.inst, user, "test")


async def test_an_ended_membership_grants_no_admin_powers(env: Env) -> None:
    inst1 = await env.login("inst1")  # instructor of cs102, from the file
    assert (await inst1.get("/api/v1/units/cs102/members")).status_code == 200
    await _end(env, "cs102", "inst1", datetime.now(UTC) - timedelta(days=1))  # ended yesterday
    roster = await inst1.get("/api/v1/units/cs102/members")
    assert roster.status_code == 403, roster.text
    added = await inst1.put("/api/v1/units/cs102/members/s1", json={"role": "student"})
    assert added.status_code == 403, added.text
    session_doc = (await inst1.get("/auth/session")).json()
    assert "cs102" not in {m["unit_id"] for m in session_doc["memberships"]}, session_doc
    async with env.db() as session:  # within the operator's grace it still grants, as its keys still work
        assert (await load_grants(session, env.inst, "inst1", 2 * 86400)).memberships == {
            "cs102": "instructor"
        }
        assert (await load_grants(session, env.inst, "inst1")).memberships == {}


async def test_erasure_blanks_the_sign_in_subject_and_an_import_does_not_write_it_back(env: Env) -> None:
    await env.login("prof-ada")  # an sso.login entry holding her subject
    await _leave_and_erase(env, "prof-ada")
    async with env.db() as session, session.begin():
        report = await apply_org(session, parse_document(stateu_document(env.inst)))  # the same file again
    assert not [line for line in report.lines if "prof-ada" in line], report.lines
    async with env.db() as session:
        user = await session.get(User, (env.inst, "prof-ada"))
        assert user is not None and (user.email, user.name) == (None, None)
        assert user.sso_subject == erased_subject(env.inst, "ada@stateu.edu")
        entries = list(
            (await session.execute(select(AuditEntry).where(AuditEntry.institution_id == env.inst))).scalars()
        )
    leaks = [(e.action, e.target) for e in entries if "ada@stateu.edu" in f"{e.before} {e.after}"]
    assert not leaks, leaks
    logins = [e for e in entries if e.action == "sso.login" and e.target.endswith("/prof-ada")]
    assert logins and all(e.after and e.after["subject"] is None for e in logins)


async def test_an_erased_person_signing_in_again_is_refused_not_made_anew(env: Env) -> None:
    await _leave_and_erase(env, "prof-ada")
    async with env.db() as session, session.begin():  # nor brought back by hand: who they were is gone
        with pytest.raises(PersonError, match="erased"):
            await reinstate(session, env.inst, "prof-ada", "test")
    for create_users in (True, False):
        async with env.db() as session, session.begin():
            with pytest.raises(SSOError) as refused:
                await provision(session, env.inst, Identity(subject="ada@stateu.edu", email="ada@stateu.edu"),
                                method="oidc", create_users=create_users)  # fmt: skip
        assert refused.value.status == 403 and refused.value.code == "user_deprovisioned"
    async with env.db() as session:
        count = await session.execute(
            text("select count(*) from app_user where institution_id = :i"), {"i": env.inst}
        )
        users = count.scalar()
    async with env.db() as session, session.begin():  # someone else still signs in and is created
        made = await provision(session, env.inst, Identity(subject="newcomer@stateu.edu"), method="oidc",
                               create_users=True)  # fmt: skip
    assert made.created
    async with env.db() as session:
        after = await session.execute(
            text("select count(*) from app_user where institution_id = :i"), {"i": env.inst}
        )
        assert after.scalar() == (users or 0) + 1


async def test_the_api_refuses_to_set_the_end_of_a_membership_from_the_file(env: Env) -> None:
    admin = await env.login("csadmin")
    ends = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    refused = await admin.put("/api/v1/units/cs101/members/s1", json={"role": "student", "ends_at": ends})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "membership_from_file" and "until:" in refused.text
    same = await admin.put("/api/v1/units/cs101/members/s1", json={"role": "student", "ends_at": None})
    assert same.status_code == 200, same.text  # as it is: nothing to refuse


async def test_an_instructor_can_neither_clear_nor_extend_an_end_an_admin_set(env: Env) -> None:
    admin, inst1 = await env.login("csadmin"), await env.login("inst1")
    ends = datetime.now(UTC) + timedelta(days=3)
    added = await admin.put(
        "/api/v1/units/cs102/members/s1", json={"role": "student", "ends_at": ends.isoformat()}
    )
    assert added.status_code == 200, added.text
    role_only = await inst1.put("/api/v1/units/cs102/members/s1", json={"role": "ta"})  # omitted: as it is
    assert role_only.status_code == 200 and datetime.fromisoformat(role_only.json()["ends_at"]) == ends
    for value in (None, (ends + timedelta(days=300)).isoformat()):
        answer = await inst1.put("/api/v1/units/cs102/members/s1", json={"role": "ta", "ends_at": value})
        assert answer.status_code == 403, answer.text
    listed = {m["user_id"]: m for m in (await admin.get("/api/v1/units/cs102/members")).json()}
    assert datetime.fromisoformat(listed["s1"]["ends_at"]) == ends
    new = await inst1.put("/api/v1/units/cs102/members/ta1", json={"role": "ta", "ends_at": ends.isoformat()})
    assert new.status_code == 403, new.text  # nor give one to a membership they add


async def test_a_deprovisioned_persons_session_and_dev_login_are_refused(env: Env) -> None:
    browser = await env.login("inst1")
    assert (await browser.get("/auth/session")).status_code == 200
    async with env.db() as session, session.begin():
        assert await deprovision(session, env.inst, "inst1", "test")
    answer = await browser.get("/auth/session")
    assert answer.status_code == 401 and "csrf_token" not in answer.text, answer.text
    async with env.anonymous() as fresh:
        login = await fresh.get("/auth/dev/login", params={"user": "inst1", "institution": env.inst})
        assert login.status_code == 403 and "eduaiq_csrf" not in fresh.cookies, login.text


def test_until_round_trips_where_the_day_after_starts_at_one() -> None:
    santiago = ZoneInfo("America/Santiago")  # 2024-09-08 starts at 01:00 (DST begins at midnight)
    ends_at = membership_end(date(2024, 9, 7), santiago)
    assert ends_at is not None and last_day(ends_at, santiago) == date(2024, 9, 7)
    ordinary = membership_end(date(2024, 9, 10), santiago)
    assert ordinary is not None and last_day(ordinary, santiago) == date(2024, 9, 10)
    inside = datetime(2024, 9, 8, 15, 0, tzinfo=santiago)  # an end inside a day (the admin API): that day
    assert last_day(inside.astimezone(UTC), santiago) == date(2024, 9, 8)
