"""Issue 17 item 13 (control plane): the admin API's origin (dashboard, /api, /auth) sends a content
security policy that allows scripts only from itself, refuses framing, limits the Referer, forbids MIME
sniffing, and adds HSTS when its public URL is https.
"""

from __future__ import annotations

import httpx

from admin_api.app import create_app
from core.settings import Settings
from tests.admin_api.conftest import Env, env, settings  # noqa: F401  (fixtures)


def policy(response: httpx.Response) -> dict[str, str]:
    header = response.headers.get("content-security-policy", "")
    directives = [d.strip().split(" ", 1) for d in header.split(";") if d.strip()]
    return {d[0]: (d[1] if len(d) > 1 else "") for d in directives}


def assert_hardened(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    csp = policy(response)
    assert csp.get("script-src") == "'self'", where
    assert csp.get("frame-ancestors") == "'none'", where
    assert csp.get("object-src") == "'none'" and csp.get("base-uri") == "'none'", where
    assert response.headers.get("x-frame-options") == "DENY", where
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("referrer-policy") == "same-origin", where


async def test_every_kind_of_answer_is_hardened(env: Env) -> None:  # noqa: F811
    admin = await env.login("uadmin")
    student = await env.login("s1")
    answers = [
        await admin.get("/api/v1/me"),
        await admin.get("/api/v1/units/stateu/export", params={"period": "2026-10", "format": "csv"}),
        await student.get("/api/v1/units/stateu/budget"),  # 403
        await env.anonymous().get("/api/v1/units/tree"),  # 401
        await admin.get("/auth/session"),
        await admin.get("/api/v1/openapi.json"),
        await admin.get("/units/cs101"),  # the dashboard's paths (404 when it is not built)
    ]
    assert [a.status_code for a in answers[:6]] == [200, 200, 403, 401, 200, 200]
    for answer in answers:
        assert_hardened(answer)
        assert "strict-transport-security" not in answer.headers  # the public URL is plain http


async def test_hsts_when_served_over_https(settings: Settings) -> None:  # noqa: F811
    app = create_app(settings.model_copy(update={"public_base_url": "https://ai.stateu.edu"}), dev_login=True)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://ai.stateu.edu") as client:
            answer = await client.get("/api/v1/healthz")
        assert answer.status_code == 200
        assert answer.headers.get("strict-transport-security", "").startswith("max-age=")
        assert int(answer.headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 15_552_000
        assert_hardened(answer)
    finally:
        await app.state.eduaiq_admin.close()


async def test_the_api_docs_page_cannot_be_framed(env: Env) -> None:  # noqa: F811
    docs = await env.anonymous().get("/api/docs")
    assert docs.status_code == 200
    assert policy(docs).get("frame-ancestors") == "'none'"
    assert docs.headers.get("x-frame-options") == "DENY"
