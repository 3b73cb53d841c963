"""A roster cannot hand a new user a sign-in subject that is, or will be, another person's.

Sign-in finds the user by (institution, sso_subject), and with `create_users` on (the default) and no
security domains a new subject is taken by whoever first holds it. The attack, as an instructor: put a
new "student" on the course roster with `sso_subject` set to the bursar's subject in another case
(`FIN@stateu.edu`: the exact-match check let it through, and IdPs such as ADFS pass on the case the
person typed), or to the e-mail of a staff member who has no subject yet (the subject they will sign in
with). The staff member's next sign-in then lands on the instructor's student, roster, keys and all.

Now an instructor never sets a subject (a new person gets theirs at first sign-in), and nobody binds a
subject that is another user's subject, e-mail or id, in any case, nor one subject to two new users.
"""

from __future__ import annotations

from core.models import AdminScope, User
from tests.admin_api.conftest import Env, env, settings  # noqa: F401  (fixtures)
from tests.admin_api.helpers import add, get_row


async def _staff_without_subject(env: Env) -> None:  # noqa: F811
    """A finance officer the institution file lists by e-mail, who has not signed in yet."""
    await add(env, User(institution_id=env.inst, id="newfin", email="newfin@stateu.edu", name="New Bursar"))
    await add(env, AdminScope(institution_id=env.inst, unit_id="eng", user_id="newfin", role="finance"))


async def test_an_instructor_cannot_claim_a_staff_members_subject(env: Env) -> None:  # noqa: F811
    await _staff_without_subject(env)
    teacher = await env.login("inst1")
    for user, subject in (("mallory", "FIN@stateu.edu"), ("mallory2", "newfin@stateu.edu"),
                          ("mallory3", "  It-Admin@StateU.edu")):  # fmt: skip
        added = await teacher.put(f"/api/v1/units/cs102/members/{user}",
                                  json={"role": "student", "profile": {"name": "M", "sso_subject": subject}})  # fmt: skip
        assert added.status_code in (403, 422), f"{subject}: {added.text}"
        assert await get_row(env, User, env.inst, user) is None
    imported = await teacher.post("/api/v1/units/cs102/members/import",
                                  content="user,role,sso_subject\nmallory,student,newfin@stateu.edu\n",
                                  headers={"Content-Type": "text/csv"})  # fmt: skip
    assert imported.status_code in (403, 422), imported.text
    assert await get_row(env, User, env.inst, "mallory") is None


async def test_an_instructor_binds_no_subject_at_all(env: Env) -> None:  # noqa: F811
    teacher = await env.login("inst1")
    fresh = {"name": "New Student", "sso_subject": "brand-new-student@stateu.edu"}
    refused = await teacher.put("/api/v1/units/cs102/members/ns", json={"role": "student", "profile": fresh})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["details"]["problems"][0]["path"] == "sso_subject"
    assert await get_row(env, User, env.inst, "ns") is None
    csv = "user,role,sso_subject\nns,student,brand-new-student@stateu.edu\n"
    imported = await teacher.post("/api/v1/units/cs102/members/import", content=csv,
                                  headers={"Content-Type": "text/csv"})  # fmt: skip
    assert imported.status_code == 403, imported.text
    # The registrar's workflow without subjects goes on (an admin or the institution file binds one later).
    plain = await teacher.put(
        "/api/v1/units/cs102/members/ns", json={"role": "student", "profile": {"name": "N"}}
    )
    assert plain.status_code == 200, plain.text
    assert (await get_row(env, User, env.inst, "ns")).sso_subject is None


async def test_an_admin_binds_no_subject_known_to_another_person(env: Env) -> None:  # noqa: F811
    await _staff_without_subject(env)
    admin = await env.login("csadmin")  # admin of cs, above cs102
    for user, subject, owner in (("x1", "fin@STATEU.EDU", "fin"), ("x2", "newfin@stateu.edu", "newfin"),
                                 ("x3", "S1", "s1")):  # fmt: skip
        refused = await admin.put(f"/api/v1/units/cs102/members/{user}",
                                  json={"role": "student", "profile": {"sso_subject": subject}})  # fmt: skip
        assert refused.status_code == 422, f"{subject}: {refused.text}"
        assert refused.json()["error"]["code"] == "sso_subject_taken"
        assert owner in refused.text
        assert await get_row(env, User, env.inst, user) is None
    # One subject for two new people in one file: refused whole, not a 500.
    twice = "user,role,sso_subject\nx4,student,twin@stateu.edu\nx5,student,Twin@stateu.edu\n"
    imported = await admin.post("/api/v1/units/cs102/members/import", content=twice,
                                headers={"Content-Type": "text/csv"})  # fmt: skip
    assert imported.status_code == 422, imported.text
    assert (
        await get_row(env, User, env.inst, "x4") is None and await get_row(env, User, env.inst, "x5") is None
    )
    # The control: a subject nobody holds.
    ok = await admin.put("/api/v1/units/cs102/members/x6",
                         json={"role": "student", "profile": {"sso_subject": "x6@stateu.edu"}})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert (await get_row(env, User, env.inst, "x6")).sso_subject == "x6@stateu.edu"
