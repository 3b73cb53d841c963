"""What the admin API uses: who is signed in, and the CSRF guard for state-changing routes.

They find the SSO service on `app.state.eduaiq_sso`, which `mount_sso` sets.

CSRF defence (both checks, for POST/PUT/PATCH/DELETE):
1. Origin: when the browser sends Origin (or, failing that, Referer), it must
   be our public origin or one explicitly allowed; `null` is refused.
2. Double submit, bound to the session: a request carrying our session cookie
   must carry `X-CSRF-Token` equal to the HMAC of its session id (given out in
   the `eduaiq_csrf` cookie and by /auth/session). A cross-site page can make
   the browser send the cookie but can neither read nor compute the token.
A request without our session cookie has no ambient authority to abuse (API
keys and tokens come in headers a cross-site page cannot set), so only the
Origin check applies to it.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from admin_api.sso.errors import SSOError
from admin_api.sso.service import CSRF_HEADER, SESSION_COOKIE, SSOService, origin_of
from admin_api.sso.sessions import Principal

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def service_of(request: Request) -> SSOService:
    service = getattr(request.app.state, "eduaiq_sso", None)
    if not isinstance(service, SSOService):
        raise RuntimeError("SSO is not mounted on this app: call admin_api.sso.mount_sso(app, router)")
    return service


async def current_principal(request: Request) -> Principal | None:
    found = await service_of(request).session_of(request)
    return found[1].principal if found else None


async def require_session(request: Request) -> Principal:
    principal = await current_principal(request)
    if principal is None:
        raise SSOError(401, "not_authenticated", "sign in first")
    return principal


async def csrf_protect(request: Request) -> None:
    if request.method.upper() in SAFE_METHODS:
        return
    service = service_of(request)
    origin = request.headers.get("origin")
    if origin is None and request.headers.get("referer"):
        origin = origin_of(request.headers["referer"]) or "null"
    if origin is not None and origin.lower() not in service.allowed_origins:
        raise SSOError(403, "csrf_failed", "cross-site request refused", {"origin": origin})
    cookie = request.cookies.get(SESSION_COOKIE)
    sid = service.sessions.sid_from_cookie(cookie) if cookie else None
    if sid is None:
        return
    token = request.headers.get(CSRF_HEADER, "")
    if not token or not hmac.compare_digest(token, service.sessions.csrf_token(sid)):
        raise SSOError(403, "csrf_failed", f"missing or wrong {CSRF_HEADER} header")
