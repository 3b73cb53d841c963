"""The institution's SCIM bearer tokens: made by `eduaiq scim token create` (shown once, kept as SHA-256
like API keys, core/keys.py), revoked by `eduaiq scim token revoke`, checked on every SCIM request.
A token is its institution's only: every query under it is bounded by that institution's id."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from admin_api.scim.errors import ScimError
from core.keys import hash_secret, new_id, new_secret
from core.models import AuditEntry, Institution, ScimToken
from core.time import utcnow

TOKEN_PREFIX = "scim-eduaiq-"


@dataclass(frozen=True)
class ScimCaller:
    institution_id: str
    token_id: str

    @property
    def actor(self) -> str:
        return f"scim:{self.token_id}"


async def create_token(session: AsyncSession, institution_id: str, actor: str) -> tuple[ScimToken, str]:
    if await session.get(Institution, institution_id) is None:
        raise LookupError(f"no institution {institution_id!r} (import its file first)")
    secret = new_secret(TOKEN_PREFIX)
    row = ScimToken(id=new_id(), token_hash=hash_secret(secret), prefix=secret[: len(TOKEN_PREFIX) + 4],
                    institution_id=institution_id, created_by=actor)  # fmt: skip
    session.add(row)
    session.add(AuditEntry(institution_id=institution_id, actor=actor, action="scim.token.create",
                           target=f"scim_token:{row.id}", before=None,
                           after={"id": row.id, "prefix": row.prefix}))  # fmt: skip
    return row, secret


async def revoke_token(session: AsyncSession, institution_id: str, token_id: str, actor: str) -> bool:
    row = await session.get(ScimToken, token_id, with_for_update=True)
    if row is None or row.institution_id != institution_id:
        raise LookupError(f"no SCIM token {token_id!r} in institution {institution_id!r}")
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.add(AuditEntry(institution_id=institution_id, actor=actor, action="scim.token.revoke",
                           target=f"scim_token:{row.id}", before={"revoked_at": None},
                           after={"revoked_at": row.revoked_at.isoformat()}))  # fmt: skip
    return True


async def list_tokens(session: AsyncSession, institution_id: str) -> list[ScimToken]:
    stmt = (
        select(ScimToken)
        .where(col(ScimToken.institution_id) == institution_id)
        .order_by(col(ScimToken.created_at))
    )
    return list((await session.execute(stmt)).scalars())


async def authenticate(request: Request, session: AsyncSession) -> ScimCaller:
    """The bearer token's institution; anything else (no token, a revoked one, an API key, a personal
    access token, a session cookie) is 401."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        raise ScimError(401, "a SCIM bearer token is required (eduaiq scim token create)")
    row = (
        await session.execute(select(ScimToken).where(col(ScimToken.token_hash) == hash_secret(secret)))
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        raise ScimError(401, "the SCIM token is unknown or revoked")
    return ScimCaller(row.institution_id, row.id)
