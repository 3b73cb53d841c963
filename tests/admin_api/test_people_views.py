"""People show where they came from, their memberships with dates, and last use (issue 18).

Each person here is created by the path that creates people in production: the institution file
(`apply_org`), a first SSO sign-in (`provision`, what SAML, OIDC and CAS sign-ins call), and the admin API
(a roster PUT and a roster CSV). Their usage is written to the ledger table. Then
`GET /units/{unit}/people` must show each one's source, the id their source knows them by, when they left,
their memberships with role, source and end, and the latest request admitted in each.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from admin_api.orgfile import apply_org, parse_document
from admin_api.people import deprovision
from admin_api.sso import Identity
from admin_api.sso.provisioning import provision
from core.models import Membership, User
from tests.admin_api.conftest import Env, stateu_document
from tests.admin_api.helpers import add, fresh_user, get_row
from tests.admin_api.usage_rows import busy_ledger, used


def _at(text_: str) -> datetime:
    return datetime.fromisoformat(text_.replace("Z", "+00:00"))


async def _people(env: Env, caller: str, unit: str, **params: str | int) -> dict[str, dict[str, Any]]:
    client = await env.login(caller)
    response = await client.get(f"/api/v1/units/{unit}/people", params=params)
    assert response.status_code == 200, response.text
    return {p["user_id"]: p for p in response.json()["people"]}


async def _sign_in_first_time(env: Env, subject: str, memberships: dict[str, str]) -> str:
    async with env.db() as session, session.begin():
        done = await provision(session, env.inst, Identity(subject=subject, email=subject, name="New Comer",
                                                           memberships=memberships), method="saml", create_users=True)  # fmt: skip
    assert done.created
    return done.user_id


async def test_people_show_their_source_memberships_with_dates_and_last_use(env: Env) -> None:
    admin = await env.login("csadmin")
    # API: one person added to the roster with a profile (and an end, set by an admin), two from a CSV.
    ends = datetime(2026, 1, 15, 6, 0, tzinfo=UTC)
    put = await admin.put("/api/v1/units/cs101/members/newbie", json={
        "role": "student", "profile": {"email": "newbie@stateu.edu", "name": "New Bie"}, "ends_at": ends.isoformat()})  # fmt: skip
    assert put.status_code == 200, put.text
    csv = await admin.post("/api/v1/units/cs101/members/import", content="user,role,email\ncsv1,student,csv1@x.edu\n",
                           headers={"Content-Type": "text/csv"})  # fmt: skip
    assert csv.status_code == 200, csv.text
    # SSO: a first sign-in that asserts cs101.
    sso_user = await _sign_in_first_time(env, f"fresh@{env.inst}.edu", {"cs101": "student"})
    # Before provenance was kept: no source. And an id SCIM would have written.
    legacy = await fresh_user(env)
    await add(env, Membership(institution_id=env.inst, unit_id="cs101", user_id=legacy, role="student"))
    async with env.db() as session, session.begin():
        await session.execute(text("update app_user set external_id = 'ext-42' where institution_id = :i and id = :u"),
                              {"i": env.inst, "u": legacy})  # fmt: skip
        await deprovision(session, env.inst, legacy, "test")
    # Usage: s1 twice in cs101; newbie once; csv1 and the SSO person never.
    t1, t2 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC), datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    await used(env, "s1", "cs101", t1)
    await used(env, "s1", "cs101", t2)
    await used(env, "newbie", "cs101", datetime(2026, 1, 10, 8, 0, tzinfo=UTC))

    people = await _people(env, "csadmin", "cs101")
    assert {uid: people[uid]["source"] for uid in ("s1", "newbie", "csv1", sso_user, legacy)} == {
        "s1": "file", "newbie": "api", "csv1": "api", sso_user: "sso", legacy: None}  # fmt: skip
    s1 = people["s1"]
    assert [(m["unit_id"], m["role"], m["source"], m["ends_at"], m["ended"]) for m in s1["memberships"]] == [
        ("cs101", "student", "file", None, False)]  # fmt: skip
    assert _at(s1["memberships"][0]["last_used_at"]) == t2 and _at(s1["last_used_at"]) == t2
    assert s1["deprovisioned_at"] is None and s1["external_id"] is None
    newbie = people["newbie"]["memberships"][0]
    assert (newbie["source"], _at(newbie["ends_at"]), newbie["ended"]) == ("api", ends, True)
    assert _at(newbie["last_used_at"]) == datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
    assert people["csv1"]["last_used_at"] is None
    assert [(m["unit_id"], m["source"]) for m in people[sso_user]["memberships"]] == [("cs101", "sso")]
    old = people[legacy]
    assert old["external_id"] == "ext-42" and old["deprovisioned_at"] is not None


async def test_the_first_source_wins_when_another_path_touches_a_person_later(env: Env) -> None:
    """A person the file created keeps 'file' when they sign in or are put on a roster; one SSO created keeps
    'sso' when the file starts naming them; one from before provenance keeps no source."""
    subject = f"later.{env.inst}"  # the user id a first sign-in makes of it is one the file can name
    sso_user = await _sign_in_first_time(env, subject, {"cs101": "student"})
    legacy = await fresh_user(env)
    # s1 (from the file) signs in; the roster API adds s1 to cs102.
    async with env.db() as session, session.begin():
        await provision(session, env.inst, Identity(subject="s1@stateu.edu", name="Sam Renamed", memberships={}),
                        method="oidc", create_users=True)  # fmt: skip
    admin = await env.login("csadmin")
    assert (await admin.put("/api/v1/units/cs102/members/s1", json={"role": "student"})).status_code == 200
    s1 = await get_row(env, User, env.inst, "s1")
    assert (s1.source, s1.name) == ("file", "Sam Renamed")  # the sign-in changed the name, not the provenance
    # The file now names the SSO person and the person from before provenance.
    doc = stateu_document(env.inst)
    doc["users"] += [{"id": sso_user, "email": f"{subject}@stateu.edu", "name": "Named By File", "sso_subject": subject},
                     {"id": legacy, "email": f"{legacy}@stateu.edu", "name": "Legacy"}]  # fmt: skip
    async with env.db() as session, session.begin():
        await apply_org(session, parse_document(doc))
    s1, by_sso, old = [await get_row(env, User, env.inst, uid) for uid in ("s1", sso_user, legacy)]
    assert (s1.source, s1.name) == ("file", "Sam One")
    assert (by_sso.source, by_sso.name) == ("sso", "Named By File")  # the file's name, SSO's provenance
    assert (old.source, old.name) == (None, "Legacy")


async def test_memberships_and_last_use_outside_the_callers_rosters_are_not_shown(env: Env) -> None:
    """inst1 teaches cs102 only: a student of both courses shows cs102 alone, and cs102's last use."""
    await add(env, Membership(institution_id=env.inst, unit_id="cs102", user_id="s1", role="student"))
    await used(env, "s1", "cs102", datetime(2026, 10, 1, 12, 0, tzinfo=UTC))
    later = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # in a course inst1 does not teach
    await used(env, "s1", "cs101", later)
    s1 = (await _people(env, "inst1", "cs102"))["s1"]
    assert [m["unit_id"] for m in s1["memberships"]] == ["cs102"]
    assert _at(s1["last_used_at"]) == datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
    both = (await _people(env, "csadmin", "cs102"))["s1"]
    assert [m["unit_id"] for m in both["memberships"]] == ["cs101", "cs102"]
    assert _at(both["last_used_at"]) == later


async def test_people_come_in_bounded_pages_that_cover_the_roster_once(env: Env) -> None:
    for _ in range(5):
        uid = await fresh_user(env)
        await add(env, Membership(institution_id=env.inst, unit_id="cs101", user_id=uid, role="student"))
    admin = await env.login("csadmin")
    roster = {m["user_id"] for m in (await admin.get("/api/v1/units/cs101/members")).json()}
    seen: list[str] = []
    after = None
    while True:
        page = (await admin.get("/api/v1/units/cs101/people", params={"limit": 3, **({"after": after} if after else {})})).json()  # fmt: skip
        assert len(page["people"]) <= 3
        seen += [p["user_id"] for p in page["people"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == sorted(roster)
    too_many = await admin.get("/api/v1/units/cs101/people", params={"limit": 501})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "invalid"


async def test_last_use_is_one_index_descent_per_person_and_unit(env: Env) -> None:
    """On a term's worth of ledger, the planner answers last use from the (institution, user, unit,
    started_at) index of migration 0005 rather than scanning the unit's events."""
    await busy_ledger(env, "cs101")
    async with env.db() as session:
        plan = "\n".join(r[0] for r in await session.execute(text(
            "explain select max(started_at) from usage_event where institution_id = :i and user_id = 's1' "
            "and unit_id = 'cs101'"), {"i": env.inst}))  # fmt: skip
    assert "ix_usage_event_person_started" in plan, plan


async def test_who_is_refused_the_people_of_a_unit(env: Env) -> None:
    """A student, the admin of a sibling college and nobody signed in are refused; a TA reads the roster."""
    for caller, status in (("s1", 403), ("hadmin", 403), ("ta1", 200), ("aud", 200)):
        response = await (await env.login(caller)).get("/api/v1/units/cs101/people")
        assert response.status_code == status, (caller, response.text)
        if status == 403:
            assert response.json()["error"]["code"] == "forbidden"
    async with env.anonymous() as anon:
        response = await anon.get("/api/v1/units/cs101/people")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    missing = await (await env.login("uadmin")).get("/api/v1/units/nope/people")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unit_not_found"
