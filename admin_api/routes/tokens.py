"""Personal access tokens for automation (a finance office's nightly export), managed from a browser session.

Tokens act as their owner narrowed by their scopes; they cannot manage tokens
themselves (a leaked token cannot mint a longer-lived one). Every token expires:
at most `EDUAIQ_PAT_MAX_DAYS` (90) after it is made, and that is also its expiry
when none is asked for, so a token forgotten in a script dies on its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlmodel import col, select

from admin_api.auth import PAT_PREFIX, SESSION_ONLY, TOKEN_SCOPES
from admin_api.context import Ctx, reader, writer
from admin_api.errors import invalid, not_found
from admin_api.ids import TokenId
from admin_api.routes.keys import KeyBody
from core.keys import hash_secret, new_id, new_secret
from core.models import PersonalAccessToken
from core.time import utcnow

router = APIRouter(tags=["personal access tokens"])

Scope = Annotated[str, Field(pattern="^(" + "|".join(TOKEN_SCOPES) + ")$")]


class TokenOut(BaseModel):
    id: str
    prefix: str
    name: str | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="send as 'Authorization: Bearer <token>'; shown this once, never again")


class TokenCreate(KeyBody):
    """`expires_at` defaults to, and may not be later than, EDUAIQ_PAT_MAX_DAYS (90) days from now."""

    scopes: list[Scope] = Field(
        min_length=1, max_length=len(TOKEN_SCOPES), description=", ".join(TOKEN_SCOPES)
    )


class ScopeInfo(BaseModel):
    scope: str
    grants: str


def _out(t: PersonalAccessToken) -> TokenOut:
    return TokenOut(id=t.id, prefix=t.prefix, name=t.name, scopes=list(t.scopes), created_at=t.created_at,
                    expires_at=t.expires_at, revoked_at=t.revoked_at)  # fmt: skip


@router.get("/tokens/scopes", response_model=list[ScopeInfo], summary="The scopes a token can have")
async def token_scopes(ctx: Ctx = Depends(reader(SESSION_ONLY))) -> list[ScopeInfo]:
    return [ScopeInfo(scope=s, grants=g) for s, g in TOKEN_SCOPES.items()]


@router.get("/tokens", response_model=list[TokenOut], summary="Your personal access tokens")
async def list_tokens(ctx: Ctx = Depends(reader(SESSION_ONLY))) -> list[TokenOut]:
    stmt = select(PersonalAccessToken).where(
        PersonalAccessToken.institution_id == ctx.institution_id,
        PersonalAccessToken.user_id == ctx.caller.user_id,
    )
    rows = (await ctx.session.execute(stmt.order_by(col(PersonalAccessToken.created_at)))).scalars().all()
    return [_out(t) for t in rows]


@router.post(
    "/tokens", response_model=TokenCreated, status_code=201, summary="Create a personal access token"
)
async def create_token(
    body: TokenCreate, ctx: Ctx = Depends(writer(SESSION_ONLY, lock=False))
) -> TokenCreated:
    days = ctx.state.settings.pat_max_days
    latest = utcnow() + timedelta(days=days)
    if body.expires_at is not None and body.expires_at > latest:
        raise invalid(f"a personal access token lives at most {days} days",
                      [{"path": "body.expires_at", "message": f"at most {latest.isoformat()}"}])  # fmt: skip
    secret = new_secret(PAT_PREFIX)
    row = PersonalAccessToken(id=new_id(), token_hash=hash_secret(secret), prefix=secret[:12],
                              institution_id=ctx.institution_id, user_id=ctx.caller.user_id, name=body.name,
                              scopes=sorted(set(body.scopes)), expires_at=body.expires_at or latest)  # fmt: skip
    ctx.session.add(row)
    ctx.audit_row("token.create", None, row, org=False)
    await ctx.commit()
    return TokenCreated(**_out(row).model_dump(), token=secret)


@router.delete("/tokens/{token_id}", response_model=TokenOut, summary="Revoke one of your tokens")
async def revoke_token(token_id: TokenId, ctx: Ctx = Depends(writer(SESSION_ONLY, lock=False))) -> TokenOut:
    row = await ctx.session.get(PersonalAccessToken, token_id)
    if row is None or row.institution_id != ctx.institution_id or row.user_id != ctx.caller.user_id:
        raise not_found("token", token_id)
    if row.revoked_at is None:
        before = row.model_copy()
        row.revoked_at = utcnow()
        ctx.audit_row("token.revoke", before, row, org=False)
        await ctx.commit()
    return _out(row)
