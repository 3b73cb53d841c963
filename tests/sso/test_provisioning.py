"""Provisioning on PostgreSQL: who owns which grant, concurrent first sign-ins, the institution's limits."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.sso import Identity, SSOError
from admin_api.sso.provisioning import Provisioned, provision
from core.db import session_scope
from tests.sso.conftest import query


async def run(
    db: async_sessionmaker[AsyncSession], inst: str, identity: Identity, create: bool = True
) -> Provisioned:
    async with session_scope(db) as session:
        return await provision(session, inst, identity, method="saml", create_users=create)


async def grants(db: async_sessionmaker[AsyncSession], inst: str, user: str) -> list[tuple[object, ...]]:
    return await query(db, "select 'm', unit_id, role, source from membership where institution_id=:i and "
                       "user_id=:u union all select 's', unit_id, role, source from admin_scope where "
                       "institution_id=:i and user_id=:u order by 1, 2, 3", i=inst, u=user)  # fmt: skip


async def test_concurrent_first_sign_ins_make_one_user(
    db: async_sessionmaker[AsyncSession], institution: str
) -> None:
    person = Identity(subject=f"new@{institution}.edu", email="n@x", memberships={"cs101": "student"},
                      admin_scopes=frozenset({("cs", "auditor")}))  # fmt: skip
    results = await asyncio.gather(*(run(db, institution, person) for _ in range(8)))
    assert len({r.user_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await query(db, "select count(*) from app_user where institution_id=:i and sso_subject=:s",
                       i=institution, s=person.subject) == [(1,)]  # fmt: skip
    assert await grants(db, institution, results[0].user_id) == [
        ("m", "cs101", "student", "sso"), ("s", "cs", "auditor", "sso")]  # fmt: skip
    creates = await query(db, "select count(*) from audit_entry where institution_id=:i and "
                          "action='sso.membership.create'", i=institution)  # fmt: skip
    assert creates == [(1,)]


async def test_file_and_api_grants_are_never_touched(
    db: async_sessionmaker[AsyncSession], institution: str
) -> None:
    async with session_scope(db) as session:
        await session.execute(text("insert into membership (institution_id, unit_id, user_id, role, source) "
                                   "values (:i, 'cs102', 'prof-file', 'researcher', 'api')"), {"i": institution})  # fmt: skip
    prof = f"prof@{institution}.edu"
    await run(db, institution, Identity(subject=prof, memberships={"cs101": "student", "cs102": "student",
                                                                    "math": "ta"}))  # fmt: skip
    assert await grants(db, institution, "prof-file") == [
        ("m", "cs101", "instructor", "file"), ("m", "cs102", "researcher", "api"), ("m", "math", "ta", "sso"),
        ("s", "math", "admin", "file")]  # fmt: skip
    await run(db, institution, Identity(subject=prof))  # asserts nothing any more
    assert await grants(db, institution, "prof-file") == [
        ("m", "cs101", "instructor", "file"), ("m", "cs102", "researcher", "api"), ("s", "math", "admin", "file")]  # fmt: skip


async def test_roles_follow_the_idp_and_archived_units_keep_history(
    db: async_sessionmaker[AsyncSession], institution: str
) -> None:
    who = Identity(subject=f"s@{institution}.edu", memberships={"cs101": "student", "cs102": "student"})
    user = (await run(db, institution, who)).user_id
    promoted = Identity(subject=who.subject, memberships={"cs101": "ta", "cs102": "student"})
    await run(db, institution, promoted)
    assert await grants(db, institution, user) == [
        ("m", "cs101", "ta", "sso"),
        ("m", "cs102", "student", "sso"),
    ]

    async with session_scope(db) as session:
        await session.execute(text("update unit set archived = true where institution_id=:i and id='cs102'"),
                              {"i": institution})  # fmt: skip
    await run(db, institution, Identity(subject=who.subject, memberships={"cs101": "ta"}))
    assert await grants(db, institution, user) == [
        ("m", "cs101", "ta", "sso"),
        ("m", "cs102", "student", "sso"),
    ]
    newcomer = Identity(
        subject=f"late@{institution}.edu", memberships={"cs102": "student", "no-such": "student"}
    )
    late = (await run(db, institution, newcomer)).user_id
    assert await grants(db, institution, late) == []  # archived and unknown units are not joined


async def test_closed_institutions_admit_only_imported_users(
    db: async_sessionmaker[AsyncSession], institution: str
) -> None:
    with pytest.raises(SSOError) as err:
        await run(db, institution, Identity(subject=f"stranger@{institution}.edu"), create=False)
    assert err.value.status == 403 and err.value.code == "user_not_provisioned"
    known = await run(db, institution, Identity(subject=f"prof@{institution}.edu", name="Prof Renamed"),
                      create=False)  # fmt: skip
    assert known.user_id == "prof-file" and not known.created
    assert await query(db, "select name from app_user where institution_id=:i and id='prof-file'",
                       i=institution) == [("Prof Renamed",)]  # fmt: skip


async def test_a_taken_user_id_gets_a_stable_suffix(
    db: async_sessionmaker[AsyncSession], institution: str
) -> None:
    """`prof-file` is an id in the file; someone whose subject is literally `prof-file` is another person."""
    first = await run(db, institution, Identity(subject="prof-file"))
    assert first.user_id.startswith("prof-file-") and first.created
    again = await run(db, institution, Identity(subject="prof-file"))
    assert again.user_id == first.user_id and not again.created


async def test_unknown_institution_is_refused(db: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(SSOError) as err:
        await run(db, "never-imported", Identity(subject="x@y"))
    assert err.value.status == 404
