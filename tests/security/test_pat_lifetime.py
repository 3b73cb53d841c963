"""Issue 17 item 10: personal access tokens cannot live for ever (EDUAIQ_PAT_MAX_DAYS, default 90).

Through the real admin API: a token made without an expiry gets one, a longer expiry is refused, and a token
left from before (no expiry, made long ago) is refused when a script sends it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core.keys import hash_secret, new_id, new_secret
from core.models import PersonalAccessToken
from core.settings import Settings
from core.time import utcnow
from tests.admin_api.conftest import Env, drop_env, env, make_env, settings  # noqa: F401  (fixtures)
from tests.admin_api.helpers import add


async def test_a_token_without_expiry_gets_the_maximum(env: Env) -> None:  # noqa: F811
    browser = await env.login("fin")
    made = await browser.post("/api/v1/tokens", json={"name": "nightly", "scopes": ["export:read"]})
    assert made.status_code == 201, made.text
    expires = made.json()["expires_at"]
    assert expires is not None, "a token that never expires"
    left = datetime.fromisoformat(expires) - utcnow()
    assert timedelta(days=89) < left <= timedelta(days=90)


async def test_an_expiry_beyond_the_maximum_is_refused(env: Env) -> None:  # noqa: F811
    browser = await env.login("fin")
    later = (utcnow() + timedelta(days=365)).isoformat()
    made = await browser.post("/api/v1/tokens", json={"scopes": ["export:read"], "expires_at": later})
    assert made.status_code == 422, made.text
    assert made.json()["error"]["details"]["problems"][0]["path"] == "body.expires_at"
    listed = await browser.get("/api/v1/tokens")
    assert listed.json() == []


async def test_an_old_token_without_expiry_stops_working(env: Env) -> None:  # noqa: F811
    secret = new_secret("pat-")
    await add(env, PersonalAccessToken(id=new_id(), token_hash=hash_secret(secret), prefix=secret[:12],
                                       institution_id=env.inst, user_id="fin", scopes=["export:read"],
                                       created_at=utcnow() - timedelta(days=91), expires_at=None))  # fmt: skip
    script = env.anonymous()
    try:
        answer = await script.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
    finally:
        await script.aclose()
    assert answer.status_code == 401, answer.text
    assert "expired" in answer.json()["error"]["message"]


async def test_the_operator_sets_the_maximum(settings: Settings) -> None:  # noqa: F811
    short = await make_env(settings.model_copy(update={"pat_max_days": 7}))
    try:
        browser = await short.login("fin")
        later = (utcnow() + timedelta(days=30)).isoformat()
        refused = await browser.post("/api/v1/tokens", json={"scopes": ["usage:read"], "expires_at": later})
        assert refused.status_code == 422, refused.text
        made = await browser.post("/api/v1/tokens", json={"scopes": ["usage:read"]})
        left = datetime.fromisoformat(made.json()["expires_at"]) - utcnow()
        assert timedelta(days=6) < left <= timedelta(days=7)
    finally:
        await drop_env(short)
