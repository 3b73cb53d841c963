"""Rosters: one member at a time and a course's CSV, checked whole before anything is written."""

from __future__ import annotations

from core.models import Membership, User
from tests.admin_api.conftest import Env
from tests.admin_api.helpers import audit_entries, get_row

ROSTER = """user,role,email,name
s2,ta,,
n1,student,n1@stateu.edu,New One
n2,,n2@stateu.edu,New Two
"""


async def roster(env: Env, unit: str) -> dict[str, str]:
    client = await env.login("uadmin")
    return {m["user_id"]: m["role"] for m in (await client.get(f"/api/v1/units/{unit}/members")).json()}


async def test_instructor_imports_a_course_roster(env: Env) -> None:
    instructor = await env.login("inst1")
    response = await instructor.post("/api/v1/units/cs102/members/import", content=ROSTER,
                                      headers={"Content-Type": "text/csv"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json() == {"added": ["n1", "n2"], "changed": ["s2"], "unchanged": [], "removed": [],
                               "users_created": ["n1", "n2"]}  # fmt: skip
    assert await roster(env, "cs102") == {"inst1": "instructor", "n1": "student", "n2": "student", "s2": "ta"}
    n1 = await get_row(env, User, env.inst, "n1")
    assert (n1.email, n1.name) == ("n1@stateu.edu", "New One")
    added = await get_row(env, Membership, env.inst, "cs102", "n1")
    assert added.source == "api"
    actions = sorted(e.action for e in await audit_entries(env))
    assert actions == ["member.add", "member.add", "member.update", "user.create", "user.create"]

    again = await instructor.post("/api/v1/units/cs102/members/import", content=ROSTER,
                                  headers={"Content-Type": "text/csv"})  # fmt: skip
    assert again.json()["unchanged"] == ["s2", "n1", "n2"] and again.json()["added"] == []


async def test_replace_removes_unlisted_members_the_caller_manages(env: Env) -> None:
    instructor = await env.login("inst1")
    response = await instructor.post("/api/v1/units/cs102/members/import", params={"replace": "true"},
                                      content="user\nn9\n", headers={"Content-Type": "text/csv"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["removed"] == ["s2"]
    assert await roster(env, "cs102") == {"inst1": "instructor", "n9": "student"}


async def test_a_bad_file_lists_every_problem_and_writes_nothing(env: Env) -> None:
    admin = await env.login("csadmin")
    bad = "user,role,email\ns1,student,\nbad id,student,\ns1,ta,\nn5,dean,n5@x\n"
    response = await admin.post("/api/v1/units/cs101/members/import", content=bad,
                                headers={"Content-Type": "text/csv"})  # fmt: skip
    assert response.status_code == 422
    problems = [p["path"] for p in response.json()["error"]["details"]["problems"]]
    assert problems == ["line 3.user", "line 4.user", "line 5.role"]
    assert await roster(env, "cs101") == {
        "prof-ada": "instructor",
        "s1": "student",
        "s3": "student",
        "ta1": "ta",
    }
    no_header = await admin.post("/api/v1/units/cs101/members/import", content="s1,student\n",
                                 headers={"Content-Type": "text/csv"})  # fmt: skip
    assert no_header.status_code == 422
    wrong_type = await admin.post("/api/v1/units/cs101/members/import", json={"user": "s1"})
    assert wrong_type.status_code == 415


async def test_instructors_manage_students_and_tas_only(env: Env) -> None:
    instructor = await env.login("inst1")
    promote = await instructor.put("/api/v1/units/cs102/members/s2", json={"role": "instructor"})
    assert promote.status_code == 403
    csv = "user,role\nn7,instructor\n"
    response = await instructor.post("/api/v1/units/cs102/members/import", content=csv,
                                     headers={"Content-Type": "text/csv"})  # fmt: skip
    assert response.status_code == 403
    assert await get_row(env, User, env.inst, "n7") is None


async def test_add_change_and_remove_one_member(env: Env) -> None:
    admin = await env.login("csadmin")
    unknown = await admin.put("/api/v1/units/cs101/members/newbie", json={"role": "student"})
    assert unknown.status_code == 404
    added = await admin.put("/api/v1/units/cs101/members/newbie",
                            json={"role": "student", "profile": {"email": "newbie@stateu.edu"}})  # fmt: skip
    assert added.status_code == 200 and added.json()["role"] == "student"
    changed = await admin.put("/api/v1/units/cs101/members/newbie", json={"role": "ta"})
    assert changed.json()["role"] == "ta"
    # removing a member takes their keys with them, each in the audit log
    key = await admin.post("/api/v1/units/cs101/keys", json={"user_id": "newbie"})
    assert key.status_code == 201
    assert (await admin.delete("/api/v1/units/cs101/members/newbie")).status_code == 204
    assert await get_row(env, Membership, env.inst, "cs101", "newbie") is None
    actions = [e.action for e in await audit_entries(env)]
    assert actions == [
        "user.create",
        "member.add",
        "member.update",
        "key.create",
        "key.delete",
        "member.remove",
    ]
    removal = (await audit_entries(env, "member.remove"))[0]
    assert removal.before is not None and removal.before["role"] == "ta" and removal.after is None
