"""Who is calling: a browser session (from SSO) or a personal access token (automation).

A PAT (`Authorization: Bearer pat-...`) acts as its user, narrowed by its
scopes: a finance script holding `usage:read export:read` can pull exports
and nothing else, whatever roles its owner has. Roles still apply on top, so a
token never reaches more than its owner could. Token management itself is
session-only, so a leaked token cannot mint more tokens.

An explicit Authorization header wins over a cookie: a script must not
silently act with whatever session the machine's browser jar holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from admin_api.errors import ApiError
from admin_api.sso import current_principal
from admin_api.state import admin_state
from core.keys import hash_secret
from core.models import PersonalAccessToken, User
from core.time import utcnow

PAT_PREFIX = "pat-"

# Scope -> what it lets a token do. A route names the one scope it needs.
TOKEN_SCOPES: dict[str, str] = {
    "org:read": "read units, budgets, extras, rosters, admins, model policy and the model catalog",
    "org:write": "change them (within the owner's roles)",
    "usage:read": "usage reports and budget explanations",
    "export:read": "chargeback and FOCUS exports",
    "audit:read": "the audit log",
    "keys:read": "list API keys",
    "keys:write": "issue and revoke API keys",
}
SESSION_ONLY = "session"  # routes no token may call (token management)
ANY_CALLER = "any"  # routes every authenticated caller may call (/me)


@dataclass(frozen=True)
class Caller:
    institution_id: str
    user_id: str
    method: str  # saml | oidc | cas | dev | pat
    token_id: str | None = None
    token_scopes: frozenset[str] | None = None  # None for a browser session
    # How long after a membership's end it still grants (EDUAIQ_MEMBERSHIP_GRACE_SECONDS, as for its keys).
    membership_grace_seconds: float = 0

    @property
    def via_token(self) -> bool:
        return self.token_id is not None

    def may(self, scope: str) -> bool:
        if scope == ANY_CALLER:
            return True
        if self.token_scopes is None:
            return True
        return scope != SESSION_ONLY and scope in self.token_scopes


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthenticated("the Authorization header must be 'Bearer pat-...'")
    if not token.startswith(PAT_PREFIX):
        raise _unauthenticated(
            "the admin API takes personal access tokens (pat-...); API keys (sk-...) are for /v1"
        )
    return token


async def _token_caller(session: AsyncSession, token: str, max_days: int, grace: float) -> Caller:
    stmt = select(PersonalAccessToken).where(PersonalAccessToken.token_hash == hash_secret(token))
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise _unauthenticated("unknown personal access token")
    if row.revoked_at is not None:
        raise _unauthenticated("this personal access token has been revoked")
    # Tokens made before every token had an expiry (or before the maximum was lowered) end by their age.
    now = utcnow()
    expired = row.expires_at is not None and row.expires_at <= now
    if expired or row.created_at + timedelta(days=max_days) <= now:
        raise _unauthenticated("this personal access token has expired")
    owner = await session.get(User, (row.institution_id, row.user_id))
    if owner is None:
        raise _unauthenticated("the owner of this token no longer exists")
    if owner.deprovisioned_at is not None:
        raise _unauthenticated("the owner of this token no longer has access (deprovisioned)")
    return Caller(row.institution_id, row.user_id, "pat", row.id, frozenset(row.scopes), grace)


def _membership_grace(request: Request) -> float:
    return float(admin_state(request).settings.membership_grace_seconds)


async def authenticate(request: Request, session: AsyncSession, pat_max_days: int) -> Caller:
    token = _bearer(request)
    grace = _membership_grace(request)
    if token is not None:
        return await _token_caller(session, token, pat_max_days, grace)
    principal = await current_principal(request)
    if principal is None:
        raise _unauthenticated("sign in first, or send 'Authorization: Bearer pat-...'")
    user = await session.get(User, (principal.institution_id, principal.user_id))
    if user is None:
        raise _unauthenticated("your account no longer exists; sign in again")
    if user.deprovisioned_at is not None:  # a session outlives nothing its person lost
        raise _unauthenticated("your account no longer has access to EduAiQ at this institution")
    return Caller(
        principal.institution_id, principal.user_id, principal.method, membership_grace_seconds=grace
    )
