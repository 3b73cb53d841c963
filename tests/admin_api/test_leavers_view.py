"""The leavers view: keys that still worked after their membership ended should be none (issue 18).

The gateway refuses such keys, so a real case cannot be made through it: the tests write the usage
events of a key admitted after its membership's end (or its person's deprovisioning) straight into the
ledger table, which is what a gateway with a stale cache or a bug would have left there, and check the view
finds exactly those, with the right times, count and cost, and nothing for a clean run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from admin_api.leavers import _LEAVERS
from admin_api.people import deprovision
from core.models import Membership, User
from core.settings import Settings
from tests.admin_api.conftest import Env, drop_env, make_env
from tests.admin_api.helpers import add, fresh_key, fresh_user
from tests.admin_api.usage_rows import busy_ledger, used

GRACE = 3600  # a key works an hour past its membership's end
CACHE = 2.0  # EDUAIQ_KEY_CACHE_SECONDS: the tolerance


@pytest.fixture
async def graced(pg_url: str, redis_url: str) -> AsyncIterator[Env]:
    settings = Settings(database_url=pg_url, redis_url=redis_url, public_base_url="http://admin.test",
                        membership_grace_seconds=GRACE, key_cache_seconds=CACHE)  # fmt: skip
    env = await make_env(settings)
    try:
        yield env
    finally:
        await drop_env(env)


def _at(text_: str) -> datetime:
    return datetime.fromisoformat(text_.replace("Z", "+00:00"))


async def _leaver(env: Env, unit: str, ends_at: datetime | None) -> tuple[str, str, str]:
    """A fresh student of `unit` with a key; returns (user, key id, key prefix)."""
    uid = await fresh_user(env)
    await add(
        env, Membership(institution_id=env.inst, unit_id=unit, user_id=uid, role="student", ends_at=ends_at)
    )
    kid, secret = await fresh_key(env, uid, unit)
    return uid, kid, secret[:16]


async def _view(env: Env, caller: str, unit: str) -> dict[str, Any]:
    response = await (await env.login(caller)).get(f"/api/v1/units/{unit}/leavers")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_clean_run_has_no_leavers(graced: Env) -> None:
    """Used before the end, within the grace, and within the key cache's tolerance after the grace: none."""
    env = graced
    ends = datetime.now(UTC) - timedelta(days=2)
    uid, kid, _ = await _leaver(env, "cs101", ends)
    await used(env, uid, "cs101", ends - timedelta(days=3), kid)
    await used(env, uid, "cs101", ends + timedelta(seconds=GRACE - 1), kid)  # the grace
    await used(env, uid, "cs101", ends + timedelta(seconds=GRACE + CACHE - 0.5), kid)  # the cache catching up
    await used(env, "s1", "cs101", datetime.now(UTC) - timedelta(minutes=5))  # a member without an end
    body = await _view(env, "uadmin", "stateu")
    assert body["leavers"] == [] and body["truncated"] is False
    assert (body["grace_seconds"], body["tolerance_seconds"]) == (GRACE, CACHE)


async def test_a_key_used_after_its_membership_ended_is_found_with_its_times_count_and_cost(
    graced: Env,
) -> None:
    env = graced
    ends = datetime(2026, 9, 1, 5, 0, tzinfo=UTC)
    uid, kid, prefix = await _leaver(env, "cs101", ends)
    await used(env, uid, "cs101", ends - timedelta(days=1), kid, cost_micro=7)  # before: not counted
    stop = ends + timedelta(seconds=GRACE)
    late = [stop + timedelta(minutes=m) for m in (10, 20, 45)]
    for at in late:
        await used(env, uid, "cs101", at, kid, cost_micro=2_500)
    # The same person's other key, not used late, and a clean member: not listed.
    other, _ = await fresh_key(env, uid, "cs101")
    await used(env, uid, "cs101", ends - timedelta(hours=2), other)
    body = await _view(env, "csadmin", "cs")
    leavers = body["leavers"]
    assert isinstance(leavers, list) and len(leavers) == 1
    row = leavers[0]
    assert (row["key_id"], row["key_prefix"], row["user_id"], row["unit_id"]) == (kid, prefix, uid, "cs101")
    assert row["unit_name"] and _at(row["ends_at"]) == ends and row["deprovisioned_at"] is None
    assert _at(row["stopped_at"]) == stop
    assert (_at(row["first_event_at"]), _at(row["last_event_at"])) == (late[0], late[-1])
    assert (row["events"], row["cost_micro"]) == (3, 7_500)
    # Subtree-scoped: cs101 and everything above it see it; cs102 and the sibling college do not.
    assert [r["key_id"] for r in (await _view(env, "uadmin", "cs101"))["leavers"]] == [kid]
    assert (await _view(env, "uadmin", "cs102"))["leavers"] == []
    assert (await _view(env, "hadmin", "hum"))["leavers"] == []


async def test_a_key_used_after_its_person_was_deprovisioned_is_found(graced: Env) -> None:
    """No end on the membership: the deprovisioning is the stop (no grace), plus the key cache's tolerance."""
    env = graced
    uid, kid, _ = await _leaver(env, "cs102", None)
    async with env.db() as session, session.begin():
        await deprovision(session, env.inst, uid, "test")
    body = await _view(env, "fin", "eng")
    assert body["leavers"] == []
    async with env.db() as session:
        person = await session.get(User, (env.inst, uid))
        assert person is not None and person.deprovisioned_at is not None
        gone = person.deprovisioned_at
    await used(env, uid, "cs102", gone + timedelta(seconds=CACHE - 1), kid)  # within the tolerance
    await used(env, uid, "cs102", gone + timedelta(seconds=30), kid)
    body = await _view(env, "fin", "eng")
    leavers = body["leavers"]
    assert isinstance(leavers, list) and len(leavers) == 1
    assert _at(leavers[0]["stopped_at"]) == gone and leavers[0]["events"] == 1
    assert _at(leavers[0]["first_event_at"]) == gone + timedelta(seconds=30)


async def test_the_view_is_bounded_and_says_when_it_was_cut(graced: Env) -> None:
    env = graced
    ends = datetime(2026, 9, 1, tzinfo=UTC)
    for i in range(3):
        uid, kid, _ = await _leaver(env, "cs101", ends)
        await used(env, uid, "cs101", ends + timedelta(days=1, minutes=i), kid)
    client = await env.login("aud")
    body = (await client.get("/api/v1/units/cs/leavers", params={"limit": 2})).json()
    assert len(body["leavers"]) == 2 and body["truncated"] is True
    assert _at(body["leavers"][0]["last_event_at"]) > _at(body["leavers"][1]["last_event_at"])  # latest first
    assert (await client.get("/api/v1/units/cs/leavers", params={"limit": 0})).status_code == 422


async def test_each_candidate_key_is_one_index_descent(graced: Env) -> None:
    """The ledger is probed through the (institution, user, unit, started_at) index of migration 0005, not
    scanned: the view stays cheap however many events the institution has."""
    env = graced
    await _leaver(env, "cs101", datetime(2026, 9, 1, tzinfo=UTC))
    await busy_ledger(env, "cs101")
    async with env.db() as session:
        explain = text("explain " + _LEAVERS.text).bindparams(*_LEAVERS._bindparams.values())
        params = {"inst": env.inst, "units": ["cs101"], "grace": 0.0, "tolerance": 2.0, "limit": 10}
        plan = "\n".join(r[0] for r in await session.execute(explain, params))
    assert "ix_usage_event_person_started" in plan, plan


async def test_who_is_refused_the_leavers_view(env: Env) -> None:
    """A student, an instructor, the admin of a sibling college and nobody signed in are refused; the admins,
    finance and auditors of the subtree read it."""
    for caller, status in (("s1", 403), ("inst1", 403), ("ta1", 403), ("hadmin", 403), ("prof-ada", 403),
                           ("csadmin", 200), ("fin", 200), ("aud", 200), ("uadmin", 200)):  # fmt: skip
        response = await (await env.login(caller)).get("/api/v1/units/cs/leavers")
        assert response.status_code == status, (caller, response.text)
        if status == 403:
            assert response.json()["error"]["code"] == "forbidden"
    async with env.anonymous() as anon:
        response = await anon.get("/api/v1/units/cs/leavers")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    missing = await (await env.login("uadmin")).get("/api/v1/units/nope/leavers")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unit_not_found"
