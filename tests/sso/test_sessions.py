"""Sessions after sign-in (cookies, Redis, expiry, logout), the CSRF guard, and the dev login."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.sso.service import safe_return_to
from admin_api.sso.sessions import SessionStore, resolve_secret
from core.time import utcnow
from tests.sso.conftest import SECRET, browser_for, build_app
from tests.sso.support import SP

EVIL = "https://evil.example"


def refused(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error


def session_key(cookie: str) -> str:
    sid = cookie.rpartition(".")[0]
    return f"eduaiq:sso:session:{hashlib.sha256(sid.encode()).hexdigest()}"


async def dev_login(browser: httpx.AsyncClient, institution: str, user: str = "prof-file") -> httpx.Response:
    resp = await browser.get(f"{SP}/auth/dev/login",
                             params={"user": user, "institution": institution, "return_to": "/admin/units"})  # fmt: skip
    assert resp.status_code == 303, resp.text
    return resp


async def test_session_cookie_is_secure_httponly_lax_and_lives_in_redis(
    browser: httpx.AsyncClient, institution: str, redis_client: Redis
) -> None:
    resp = await dev_login(browser, institution)
    assert resp.headers["location"] == "/admin/units"
    cookies = {c.split("=", 1)[0]: c.lower() for c in resp.headers.get_list("set-cookie")}
    session = cookies["eduaiq_session"]
    assert "httponly" in session and "secure" in session and "samesite=lax" in session and "path=/" in session
    csrf = cookies["eduaiq_csrf"]
    assert "httponly" not in csrf and "secure" in csrf and "samesite=lax" in csrf
    ttl = await redis_client.ttl(session_key(browser.cookies["eduaiq_session"]))
    assert 0 < ttl <= 8 * 3600
    who = (await browser.get(f"{SP}/auth/session")).json()
    assert who["principal"] == {**who["principal"], "user_id": "prof-file", "institution_id": institution,
                                "method": "dev", "email": f"prof@{institution}.edu"}  # fmt: skip
    assert {(m["unit_id"], m["role"]) for m in who["memberships"]} == {("cs101", "instructor")}
    assert {(s["unit_id"], s["role"]) for s in who["admin_scopes"]} == {("math", "admin")}


async def test_forged_or_tampered_cookies_are_no_session(
    app: object, browser: httpx.AsyncClient, institution: str
) -> None:
    await dev_login(browser, institution)
    good = browser.cookies["eduaiq_session"]
    sid, _, mac = good.rpartition(".")
    other_secret = SessionStore(None, "another-secret-" + "y" * 40, 60)  # type: ignore[arg-type]
    for forged in (f"{sid}.{mac[:-2]}xx", f"{sid}x.{mac}", other_secret.cookie_value(sid), sid, ""):
        async with browser_for(app) as stranger:  # type: ignore[arg-type]
            stranger.cookies.set("eduaiq_session", forged, domain="eduaiq.test")
            refused(await stranger.get(f"{SP}/auth/session"), 401, "not_authenticated")


async def test_csrf_guard_on_state_changing_routes(
    app: object, browser: httpx.AsyncClient, institution: str
) -> None:
    echo = f"{SP}/api/v1/echo"
    await dev_login(browser, institution)
    token = browser.cookies["eduaiq_csrf"]
    refused(await browser.post(echo), 403, "csrf_failed")
    tampered = ("B" if token[0] != "B" else "C") + token[1:]  # the first character: all six bits count
    refused(await browser.post(echo, headers={"X-CSRF-Token": tampered}), 403, "csrf_failed")
    ok = await browser.post(echo, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.json() == {"user": "prof-file", "institution": institution}
    ok = await browser.post(echo, headers={"X-CSRF-Token": token, "Origin": "https://admin.eduaiq.test"})
    assert ok.status_code == 200
    refused(await browser.post(echo, headers={"X-CSRF-Token": token, "Origin": EVIL}), 403, "csrf_failed")
    refused(await browser.post(echo, headers={"X-CSRF-Token": token, "Origin": "null"}), 403, "csrf_failed")
    refused(await browser.post(echo, headers={"X-CSRF-Token": token, "Referer": f"{EVIL}/page"}), 403,
            "csrf_failed")  # fmt: skip

    async with browser_for(app) as other:  # type: ignore[arg-type]
        await dev_login(other, institution)
        # Another session's token does not fit this session's cookie.
        refused(await other.post(echo, headers={"X-CSRF-Token": token}), 403, "csrf_failed")
    async with browser_for(app) as anonymous:  # type: ignore[arg-type]
        refused(await anonymous.post(echo, headers={"Origin": SP}), 401, "not_authenticated")


async def test_logout_ends_the_session_everywhere(
    app: object, browser: httpx.AsyncClient, institution: str, redis_client: Redis
) -> None:
    await dev_login(browser, institution)
    cookie = browser.cookies["eduaiq_session"]
    refused(await browser.post(f"{SP}/auth/logout"), 403, "csrf_failed")  # logout is state-changing too
    assert await redis_client.exists(session_key(cookie)) == 1

    out = await browser.post(f"{SP}/auth/logout", headers={"X-CSRF-Token": browser.cookies["eduaiq_csrf"]})
    assert out.status_code == 200 and out.json() == {"logged_out": True, "redirect": None}
    assert await redis_client.exists(session_key(cookie)) == 0
    assert "eduaiq_session" not in browser.cookies
    async with browser_for(app) as copy:  # a copy of the old cookie is worth nothing now
        copy.cookies.set("eduaiq_session", cookie, domain="eduaiq.test")
        refused(await copy.get(f"{SP}/auth/session"), 401, "not_authenticated")


async def test_dev_login_refuses_unknown_users_and_offsite_redirects(
    browser: httpx.AsyncClient, institution: str
) -> None:
    resp = await browser.get(f"{SP}/auth/dev/login", params={"user": "nobody", "institution": institution})
    refused(resp, 404, "unknown_user")
    resp = await browser.get(f"{SP}/auth/dev/login",
                             params={"user": "prof-file", "institution": institution, "return_to": "//evil.example/x"})  # fmt: skip
    assert resp.status_code == 303 and resp.headers["location"] == "/"


async def test_dev_login_is_off_unless_dev_mode(
    registry: object, db: async_sessionmaker[AsyncSession], redis_client: Redis, institution: str
) -> None:
    prod = build_app(registry, db, redis_client, dev_mode=False)  # type: ignore[arg-type]
    async with browser_for(prod) as client:
        resp = await client.get(
            f"{SP}/auth/dev/login", params={"user": "prof-file", "institution": institution}
        )
        refused(resp, 404, "dev_login_disabled")
    await prod.state.eduaiq_sso.aclose()


async def test_session_secret_rules(
    registry: object,
    db: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match="EDUAIQ_SESSION_SECRET"):
        build_app(registry, db, redis_client, dev_mode=False, secret=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 32"):
        resolve_secret("short", dev_mode=False)
    with caplog.at_level(logging.WARNING, logger="admin_api.sso.sessions"):
        first, second = resolve_secret(None, dev_mode=True), resolve_secret(None, dev_mode=True)
    assert len(first) >= 32 and first != second
    assert "ephemeral" in caplog.text
    assert resolve_secret(SECRET, dev_mode=False) == SECRET


async def test_session_ends_when_the_idp_says_so(redis_client: Redis) -> None:
    store = SessionStore(redis_client, SECRET, ttl_seconds=3600)
    sid, record = await store.create(institution_id="x", user_id="u", method="saml",
                                     not_after=utcnow() + timedelta(seconds=30))  # fmt: skip
    ttl = await redis_client.ttl(session_key(store.cookie_value(sid)))
    assert 0 < ttl <= 30
    assert record.principal.expires_at <= utcnow() + timedelta(seconds=30)
    assert (await store.load(sid)) == record
    with pytest.raises(ValueError):
        await store.create(institution_id="x", user_id="u", method="saml", not_after=utcnow())
    await store.destroy(sid)


@given(st.text(max_size=80))
def test_return_to_is_always_a_local_path(value: str) -> None:
    target = safe_return_to(value)
    assert target.startswith("/")
    assert not target.startswith("//") and "\\" not in target
    assert all(ord(ch) >= 32 for ch in target)
    assert target in ("/", value)


@given(st.sampled_from(["https://evil.example", "//evil.example", "/\\evil.example", "javascript:alert(1)"]),
       st.text(max_size=20))  # fmt: skip
def test_return_to_never_leaves_the_site(prefix: str, rest: str) -> None:
    assert safe_return_to(prefix + rest) == "/"
