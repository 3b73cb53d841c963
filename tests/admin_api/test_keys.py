"""API keys: shown once, stored hashed, listed without the secret, revoked for good; the GPT4All hand-off."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.keys import hash_secret
from core.models import ApiKey
from core.settings import Settings
from gateway.auth import KeyCache
from gateway.errors import ApiError as GatewayError
from tests.admin_api.conftest import BASE_URL, Env
from tests.admin_api.helpers import audit_entries, get_row


async def test_student_creates_a_key_shown_once_with_gpt4all_steps(env: Env) -> None:
    student = await env.login("s1")
    me = (await student.get("/api/v1/me")).json()
    assert [(m["unit_id"], m["role"]) for m in me["memberships"]] == [("cs101", "student")]
    assert me["memberships"][0]["effective_models"] == ["qwen2-vl-2b", "llama-3.1-8b", "gpt-4o-mini"]

    created = await student.post("/api/v1/keys", json={"unit_id": "cs101", "name": "my laptop"})
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["key"]
    assert secret.startswith("sk-eduaiq-") and body["prefix"] == secret[:16]
    assert body["base_url"] == f"{BASE_URL}/v1"
    setup = body["gpt4all"]
    assert setup["api_base_url"] == f"{BASE_URL}/v1" and setup["api_key"] == secret
    assert setup["model_name"] in me["memberships"][0]["effective_models"]
    assert any("Settings > Add Model > Remote Providers" in s for s in setup["steps"])
    assert any("Custom provider" in s for s in setup["steps"])

    row = await get_row(env, ApiKey, body["id"])
    assert row.key_hash == hash_secret(secret) and (row.user_id, row.unit_id) == ("s1", "cs101")
    assert secret not in str(row.model_dump())
    [entry] = await audit_entries(env, "key.create")
    assert secret not in str(entry.after) and "key_hash" not in (entry.after or {})

    listed = (await student.get("/api/v1/keys")).json()
    mine = [k for k in listed if k["id"] == body["id"]]
    assert len(mine) == 1 and "key" not in mine[0] and mine[0]["name"] == "my laptop"


async def test_revoked_key_is_refused_by_the_gateways_key_lookup(env: Env, settings: Settings) -> None:
    student = await env.login("s1")
    created = (await student.post("/api/v1/keys", json={"unit_id": "cs101"})).json()
    gateway_keys = KeyCache(env.state.engine, ttl=0)  # a replica whose cache entry has just expired
    principal = await gateway_keys.authenticate(f"Bearer {created['key']}")
    assert (principal.user_id, principal.unit_id) == ("s1", "cs101")

    revoked = await student.delete(f"/api/v1/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await get_row(env, ApiKey, created["id"])).revoked_at is not None
    with pytest.raises(GatewayError) as refused:
        await gateway_keys.authenticate(f"Bearer {created['key']}")
    assert refused.value.status == 401
    # every replica's cache forgets a key within key_cache_seconds, which settings cap at 5
    assert settings.key_cache_seconds <= 5
    with pytest.raises(ValidationError):
        Settings(key_cache_seconds=5.5)
    again = await student.delete(f"/api/v1/keys/{created['id']}")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert len(await audit_entries(env, "key.revoke")) == 1


async def test_instructor_issues_and_revokes_course_keys(env: Env) -> None:
    instructor = await env.login("prof-ada")
    issued = await instructor.post("/api/v1/units/cs101/keys", json={"user_id": "s3", "name": "lab PC"})
    assert issued.status_code == 201, issued.text
    assert issued.json()["created_by"] == "prof-ada" and issued.json()["user_id"] == "s3"
    s3 = await env.login("s3")
    assert [k["id"] for k in (await s3.get("/api/v1/keys")).json()] == [
        k["id"] for k in (await instructor.get("/api/v1/units/cs101/keys")).json() if k["user_id"] == "s3"
    ]
    revoked = await instructor.delete(f"/api/v1/units/cs101/keys/{issued.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None

    outsider = await instructor.post("/api/v1/units/cs101/keys", json={"user_id": "s2"})
    assert outsider.status_code == 422 and outsider.json()["error"]["code"] == "not_a_member"
    wrong_unit = await instructor.delete(f"/api/v1/units/cs102/keys/{issued.json()['id']}")
    assert wrong_unit.status_code == 404


async def test_key_expiry_must_be_ahead(env: Env) -> None:
    student = await env.login("s1")
    past = await student.post("/api/v1/keys", json={"unit_id": "cs101", "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 422
    naive = await student.post("/api/v1/keys", json={"unit_id": "cs101", "expires_at": "2099-01-01T00:00:00"})
    assert naive.status_code == 422
    other_unit = await student.post("/api/v1/keys", json={"unit_id": "cs102"})
    assert other_unit.status_code == 403
