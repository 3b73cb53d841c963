"""How callers authenticate: SSO sessions with CSRF, personal access tokens with scopes, nothing else."""

from __future__ import annotations

from core.keys import hash_secret
from core.models import PersonalAccessToken
from tests.admin_api.conftest import Env
from tests.admin_api.helpers import get_row


async def test_finance_token_reads_usage_and_nothing_else(env: Env) -> None:
    browser = await env.login("fin")
    created = await browser.post(
        "/api/v1/tokens", json={"name": "nightly export", "scopes": ["usage:read", "export:read"]}
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert token.startswith("pat-")
    row = await get_row(env, PersonalAccessToken, created.json()["id"])
    assert row.token_hash == hash_secret(token) and row.scopes == ["export:read", "usage:read"]
    assert all("token" not in t for t in (await browser.get("/api/v1/tokens")).json())

    script = env.anonymous()
    script.headers["Authorization"] = f"Bearer {token}"
    try:
        me = (await script.get("/api/v1/me")).json()
        assert me["authenticated_by"] == "pat" and me["token_scopes"] == ["export:read", "usage:read"]
        assert (
            await script.get("/api/v1/explain", params={"unit": "cs101", "user": "s1"})
        ).status_code == 200
        tree = await script.get("/api/v1/units/tree")
        assert tree.status_code == 403 and tree.json()["error"]["code"] == "token_scope"
        minting = await script.post("/api/v1/tokens", json={"scopes": ["org:write"]})
        assert minting.status_code == 403

        revoked = await browser.delete(f"/api/v1/tokens/{created.json()['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        after = await script.get("/api/v1/me")
        assert after.status_code == 401 and after.json()["error"]["code"] == "unauthenticated"
    finally:
        await script.aclose()


async def test_token_writes_need_no_csrf_but_session_writes_do(env: Env) -> None:
    admin_script = await env.token_client("uadmin", ["org:write"])
    renamed = await admin_script.patch("/api/v1/units/cs", json={"name": "Computing"})
    assert renamed.status_code == 200, renamed.text

    browser = await env.login("uadmin")
    csrf = browser.headers.pop("X-CSRF-Token")
    refused = await browser.patch("/api/v1/units/cs", json={"name": "Computer Science"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    forged = await browser.patch("/api/v1/units/cs", json={"name": "x"}, headers={"X-CSRF-Token": "forged"})
    assert forged.status_code == 403
    cross_site = await browser.patch("/api/v1/units/cs", json={"name": "x"},
                                     headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})  # fmt: skip
    assert cross_site.status_code == 403
    ok = await browser.patch(
        "/api/v1/units/cs", json={"name": "Computer Science"}, headers={"X-CSRF-Token": csrf}
    )
    assert ok.status_code == 200


async def test_anything_but_a_session_or_a_token_is_unauthenticated(env: Env) -> None:
    async with env.anonymous() as client:
        assert (await client.get("/api/v1/me")).status_code == 401
        api_key = await client.get("/api/v1/me", headers={"Authorization": "Bearer sk-eduaiq-demo-s1-cs101"})
        assert api_key.status_code == 401 and "personal access tokens" in api_key.json()["error"]["message"]
        unknown = await client.get("/api/v1/me", headers={"Authorization": "Bearer pat-not-a-real-token"})
        assert unknown.status_code == 401
        basic = await client.get("/api/v1/me", headers={"Authorization": "Basic dTpw"})
        assert basic.status_code == 401
        forged_cookie = await client.get("/api/v1/me", headers={"Cookie": "eduaiq_session=abc.def"})
        assert forged_cookie.status_code == 401

    browser = await env.login("s1")
    assert (await browser.post("/auth/logout")).status_code == 200
    assert (await browser.get("/api/v1/me")).status_code == 401


async def test_token_scopes_are_checked(env: Env) -> None:
    browser = await env.login("fin")
    unknown_scope = await browser.post("/api/v1/tokens", json={"scopes": ["root:everything"]})
    assert unknown_scope.status_code == 422
    none = await browser.post("/api/v1/tokens", json={"scopes": []})
    assert none.status_code == 422
    listed = {s["scope"] for s in (await browser.get("/api/v1/tokens/scopes")).json()}
    assert {"usage:read", "export:read"} <= listed
