"""A person's life cycle in the admin API and the key lookup: what deprovisioning, a membership's end,
reinstating and erasing change, each where a credential is checked (issue 18). The gateway processes'
view of the same is tests/people/test_leavers.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from admin_api.people import PersonError, deprovision, erase
from admin_api.sso.errors import SSOError
from admin_api.sso.mapping import Identity
from admin_api.sso.provisioning import provision
from core.models import AuditEntry, Membership, User
from core.models.access import erased_subject
from core.settings import Settings
from gateway.auth import KeyCache
from gateway.errors import ApiError as GatewayError
from tests.admin_api.conftest import BASE_URL, Env, drop_env, make_env


@pytest.fixture
async def env(pg_url: str, redis_url: str) -> AsyncIterator[Env]:
    e = await make_env(Settings(database_url=pg_url, redis_url=redis_url, public_base_url=BASE_URL))
    try:
        yield e
    finally:
        await drop_env(e)


async def _key(env: Env, user: str = "s1", unit: str = "cs101") -> str:
    created = await (await env.login(user)).post("/api/v1/keys", json={"unit_id": unit})
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


async def _deprovision(env: Env, user: str) -> None:
    async with env.db() as session, session.begin():
        assert await deprovision(session, env.inst, user, "test")


async def test_a_deprovisioned_persons_key_token_and_session_are_refused(env: Env) -> None:
    secret = await _key(env, "s1")
    keys = KeyCache(env.state.engine, ttl=0)
    await keys.authenticate(f"Bearer {secret}")
    admin_token = await env.token_client("csadmin", ["org:read"])
    admin_session = await env.login("csadmin")
    assert (await admin_token.get("/api/v1/me")).status_code == 200
    assert (await admin_session.get("/api/v1/me")).status_code == 200

    await _deprovision(env, "s1")
    await _deprovision(env, "csadmin")
    with pytest.raises(GatewayError) as refused:
        await keys.authenticate(f"Bearer {secret}")
    assert refused.value.status == 401 and "no longer has access" in refused.value.message
    for client in (admin_token, admin_session):  # a token and a signed-in browser: refused at once
        answer = await client.get("/api/v1/me")
        assert answer.status_code == 401, answer.text
    async with env.db() as session, session.begin():  # signing in again gives nothing back
        with pytest.raises(SSOError) as caught:
            await provision(session, env.inst, Identity(subject="cs-admin@stateu.edu"), method="oidc",
                            create_users=True)  # fmt: skip
    assert caught.value.code == "user_deprovisioned"


async def test_a_membership_end_stops_its_keys_after_the_grace(env: Env) -> None:
    admin = await env.login("csadmin")
    added = await admin.put("/api/v1/units/cs102/members/s1", json={"role": "student"})  # an API membership
    assert added.status_code == 200, added.text
    secret = await _key(env, "s1", "cs102")
    ended = datetime.now(UTC) - timedelta(minutes=5)
    put = await admin.put(
        "/api/v1/units/cs102/members/s1", json={"role": "student", "ends_at": ended.isoformat()}
    )
    assert put.status_code == 200, put.text
    assert datetime.fromisoformat(put.json()["ends_at"]) == ended
    listed = {m["user_id"]: m for m in (await admin.get("/api/v1/units/cs102/members")).json()}
    assert listed["s1"]["ends_at"] is not None and listed["s1"]["deprovisioned"] is False
    with pytest.raises(GatewayError) as refused:
        await KeyCache(env.state.engine, ttl=0).authenticate(f"Bearer {secret}")
    assert refused.value.status == 401 and "ended on" in refused.value.message
    # With an hour's grace the key still works five minutes after the end; a naive time is refused.
    await KeyCache(env.state.engine, ttl=0, grace=3600).authenticate(f"Bearer {secret}")
    naive = await admin.put(
        "/api/v1/units/cs102/members/s1", json={"role": "student", "ends_at": "2030-01-01T00:00:00"}
    )
    assert naive.status_code == 422, naive.text
    kept = await admin.put("/api/v1/units/cs102/members/s1", json={"role": "student"})  # omitted: as it is
    assert kept.status_code == 200 and datetime.fromisoformat(kept.json()["ends_at"]) == ended
    reopened = await admin.put("/api/v1/units/cs102/members/s1", json={"role": "student", "ends_at": None})
    assert reopened.status_code == 200 and reopened.json()["ends_at"] is None
    await KeyCache(env.state.engine, ttl=0).authenticate(f"Bearer {secret}")


async def test_erase_blanks_personal_fields_and_their_audit_snapshots_and_keeps_the_rest(env: Env) -> None:
    async with env.db() as session, session.begin():
        with pytest.raises(PersonError, match="still active"):
            await erase(session, env.inst, "prof-ada", "test")
        before = (
            await session.execute(text("select count(*) from membership where user_id = 'prof-ada'"))
        ).scalar()
    await _deprovision(env, "prof-ada")
    async with env.db() as session, session.begin():
        rewritten = await erase(session, env.inst, "prof-ada", "test")
    assert rewritten >= 1  # the import's snapshot of her row
    async with env.db() as session:
        user = await session.get(User, (env.inst, "prof-ada"))
        assert user is not None and (user.email, user.name) == (None, None)
        assert user.sso_subject == erased_subject(env.inst, "ada@stateu.edu") and user.erased_at is not None
        audit = (
            await session.execute(select(AuditEntry).where(AuditEntry.institution_id == env.inst))
        ).scalars()
        entries = list(audit)
        # (her name is also in a unit's, "Prof. Ada Lovelace": the institution's words, not her record)
        leaks = [(e.action, e.target) for e in entries if "ada@stateu.edu" in f"{e.before} {e.after}"
                 or (e.target.startswith("app_user:") and "Ada Lovelace" in f"{e.before} {e.after}")]  # fmt: skip
        assert entries and not leaks, leaks
        members = (
            await session.execute(select(Membership).where(Membership.user_id == "prof-ada"))
        ).scalars()
        assert len(list(members)) == before  # she keeps her rows (and the ledger its amounts): only names go
