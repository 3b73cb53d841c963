"""Issue 17 item 11: instructors manage the students and TAs of their own courses, nobody else; rosters
cannot bind new users to sign-in subjects the institution's SSO settings would not admit.

Through the real admin API with people signed in: `inst1` teaches cs102 and holds no admin role; `fin` is
the bursar (finance on eng), `uadmin` the institution admin, `prof-ada` teaches cs101.
"""

from __future__ import annotations

from sqlalchemy import update

from core.models import Institution, Membership, User
from tests.admin_api.conftest import Env, env, settings  # noqa: F401  (fixtures)
from tests.admin_api.helpers import add, get_row


async def keys_of(env: Env, user: str) -> int:  # noqa: F811
    admin = await env.login("uadmin")
    return sum(1 for k in (await admin.get("/api/v1/units/cs102/keys")).json() if k["user_id"] == user)


async def test_an_instructor_cannot_enrol_staff_and_take_a_key_in_their_name(env: Env) -> None:  # noqa: F811
    teacher = await env.login("inst1")
    for user, role in (("fin", "student"), ("uadmin", "ta"), ("prof-ada", "student")):
        added = await teacher.put(f"/api/v1/units/cs102/members/{user}", json={"role": role})
        assert added.status_code == 403, f"{user}: {added.text}"
        assert await get_row(env, Membership, env.inst, "cs102", user) is None
    imported = await teacher.post("/api/v1/units/cs102/members/import", content="user,role\nfin,student\n",
                                  headers={"Content-Type": "text/csv"})  # fmt: skip
    assert imported.status_code == 403, imported.text
    assert await get_row(env, Membership, env.inst, "cs102", "fin") is None

    # Even when an admin put the bursar on the roster, the instructor cannot take a key in her name.
    await add(env, Membership(institution_id=env.inst, unit_id="cs102", user_id="fin", role="student"))
    issued = await teacher.post("/api/v1/units/cs102/keys", json={"user_id": "fin"})
    assert issued.status_code == 403, issued.text
    assert await keys_of(env, "fin") == 0


async def test_an_instructor_still_manages_students(env: Env) -> None:  # noqa: F811
    teacher = await env.login("inst1")
    added = await teacher.put("/api/v1/units/cs102/members/s1", json={"role": "ta"})  # s1 studies cs101
    assert added.status_code == 200, added.text
    issued = await teacher.post("/api/v1/units/cs102/keys", json={"user_id": "s1"})
    assert issued.status_code == 201, issued.text
    revoked = await teacher.delete(f"/api/v1/units/cs102/keys/{issued.json()['id']}")
    assert revoked.status_code == 200, revoked.text
    admin = await env.login("uadmin")  # an admin of the unit may enrol anyone
    assert (await admin.put("/api/v1/units/cs102/members/fin", json={"role": "student"})).status_code == 200
    assert (await admin.post("/api/v1/units/cs102/keys", json={"user_id": "fin"})).status_code == 201


async def test_rosters_bind_no_subject_when_the_institution_creates_no_users(env: Env) -> None:  # noqa: F811
    async with env.db() as session, session.begin():
        await session.execute(update(Institution).where(Institution.id == env.inst)  # type: ignore[arg-type]
                              .values(sso={"mapping": {"create_users": False}}))  # fmt: skip
    admin = await env.login("csadmin")  # an instructor may bind no subject at all (test_roster_subjects.py)
    profile = {"name": "Mallory", "sso_subject": "mallory@stateu.edu"}
    added = await admin.put(
        "/api/v1/units/cs102/members/mallory", json={"role": "student", "profile": profile}
    )
    assert added.status_code == 422, added.text
    assert await get_row(env, User, env.inst, "mallory") is None
    imported = await admin.post(
        "/api/v1/units/cs102/members/import",
        content="user,role,sso_subject\nmallory,student,mallory@stateu.edu\n",
        headers={"Content-Type": "text/csv"},
    )
    assert imported.status_code == 422, imported.text
    assert await get_row(env, User, env.inst, "mallory") is None
    # without a subject the registrar's workflow still works (the user cannot sign in until imported)
    teacher = await env.login("inst1")
    plain = await teacher.put(
        "/api/v1/units/cs102/members/newbie", json={"role": "student", "profile": {"name": "N"}}
    )
    assert plain.status_code == 200, plain.text


async def test_rosters_bind_subjects_only_in_the_institutions_domains(env: Env) -> None:  # noqa: F811
    async with env.db() as session, session.begin():
        await session.execute(update(Institution).where(Institution.id == env.inst)  # type: ignore[arg-type]
                              .values(sso={"mapping": {"scopes": ["stateu.edu"]}}))  # fmt: skip
    admin = await env.login("csadmin")
    outside = {"sso_subject": "someone@evil.example"}
    refused = await admin.put("/api/v1/units/cs102/members/ev", json={"role": "student", "profile": outside})
    assert refused.status_code == 422, refused.text
    inside = {"sso_subject": "new-student@stateu.edu"}
    added = await admin.put("/api/v1/units/cs102/members/ns", json={"role": "student", "profile": inside})
    assert added.status_code == 200, added.text
    assert (await get_row(env, User, env.inst, "ns")).sso_subject == "new-student@stateu.edu"
