"""API keys: a user's own keys for the units they belong to, and an instructor's keys for a course.

A key is shown once, in the response that creates it; only its SHA-256 is
stored (core.keys). Revoking sets `revoked_at`: the gateway's key cache
forgets a key within `key_cache_seconds` (at most 5), so a revoked key stops
working on every replica within that time. The creation response carries
everything a student needs to set up GPT4All (or any OpenAI-compatible
client): the base URL, the key, a model name and the steps.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from admin_api.context import Ctx, reader, writer
from admin_api.errors import conflict, invalid, not_found
from admin_api.ids import SLUG, TEXT, KeyId, UnitId
from admin_api.policy import catalogue, effective_all
from admin_api.roster import require_instructor_reach
from core.keys import hash_secret, new_id, new_secret
from core.models import ApiKey, Membership
from core.time import utcnow

router = APIRouter(tags=["api keys"])

MAX_LIFETIME = timedelta(days=5 * 366)


class KeyOut(BaseModel):
    id: str
    prefix: str  # the first characters, so a person can tell their keys apart
    user_id: str
    unit_id: str
    name: str | None
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ClientSetup(BaseModel):
    """What to type into GPT4All (Settings > Add Model > Remote Providers > Custom provider)."""

    api_base_url: str
    api_key: str
    model_name: str | None
    models: list[str]
    steps: list[str]


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown this once, never again")
    base_url: str
    gpt4all: ClientSetup


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=TEXT)
    expires_at: datetime | None = Field(default=None, description="optional; at most five years ahead")

    @field_validator("expires_at")
    @classmethod
    def _future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2027-01-31T23:59:59Z)")
        now = utcnow()
        if v <= now or v > now + MAX_LIFETIME:
            raise ValueError("must be in the future and at most five years ahead")
        return v


class OwnKeyCreate(KeyBody):
    unit_id: str = Field(pattern=SLUG)


class MemberKeyCreate(KeyBody):
    user_id: str = Field(pattern=SLUG)


def _out(k: ApiKey) -> KeyOut:
    return KeyOut(id=k.id, prefix=k.prefix, user_id=k.user_id, unit_id=k.unit_id, name=k.name,
                  created_by=k.created_by, created_at=k.created_at, expires_at=k.expires_at,
                  revoked_at=k.revoked_at)  # fmt: skip


def gpt4all_steps(base_url: str, model: str | None) -> list[str]:
    return [
        "Open GPT4All and go to Settings > Add Model > Remote Providers.",
        "Choose 'Custom provider' (an OpenAI-compatible server).",
        f"API base URL: {base_url}",
        "API key: the key shown above (copy it now: it is not shown again).",
        f"Model name: {model}" if model else "Model name: one of the models listed for your unit.",
        "Save, then pick the model in a new chat.",
    ]


async def _issue(ctx: Ctx, user_id: str, unit_id: str, body: KeyBody) -> KeyCreated:
    unit = ctx.access.unit(unit_id)
    if unit.archived:
        raise conflict("unit_archived", f"unit {unit_id!r} is archived", unit=unit_id)
    if await ctx.session.get(Membership, (ctx.institution_id, unit_id, user_id)) is None:
        raise invalid(f"{user_id!r} is not a member of {unit_id!r}: keys are issued to members",
                      [{"path": "user_id", "message": "not a member of this unit"}], code="not_a_member")  # fmt: skip
    secret = new_secret()
    key = ApiKey(id=new_id(), key_hash=hash_secret(secret), prefix=secret[:16], institution_id=ctx.institution_id,
                 user_id=user_id, unit_id=unit_id, name=body.name, created_by=ctx.caller.user_id,
                 expires_at=body.expires_at)  # fmt: skip
    ctx.session.add(key)
    ctx.audit_row("key.create", None, key, org=False)
    await ctx.commit()
    allowed = effective_all(ctx.access.tree, await catalogue(ctx.session, ctx.institution_id)).get(
        unit_id, ()
    )
    model = unit.default_model if unit.default_model in allowed else (allowed[0] if allowed else None)
    base_url = ctx.state.settings.public_base_url.rstrip("/") + "/v1"
    setup = ClientSetup(api_base_url=base_url, api_key=secret, model_name=model, models=list(allowed),
                        steps=gpt4all_steps(base_url, model))  # fmt: skip
    return KeyCreated(**_out(key).model_dump(), key=secret, base_url=base_url, gpt4all=setup)


async def _revoke(ctx: Ctx, key: ApiKey) -> KeyOut:
    if key.revoked_at is None:
        before = key.model_copy()
        key.revoked_at = utcnow()
        ctx.audit_row("key.revoke", before, key, org=False)
        await ctx.commit()
    return _out(key)


async def _keys(ctx: Ctx, *conditions: ColumnElement[bool] | bool) -> list[KeyOut]:
    stmt = select(ApiKey).where(ApiKey.institution_id == ctx.institution_id, *conditions)
    rows = (await ctx.session.execute(stmt.order_by(col(ApiKey.created_at), col(ApiKey.id)))).scalars().all()
    return [_out(k) for k in rows]


async def _key(ctx: Ctx, key_id: str) -> ApiKey:
    key = await ctx.session.get(ApiKey, key_id)
    if key is None or key.institution_id != ctx.institution_id:
        raise not_found("key", key_id)
    return key


@router.get("/keys", response_model=list[KeyOut], summary="Your API keys")
async def my_keys(ctx: Ctx = Depends(reader("keys:read"))) -> list[KeyOut]:
    return await _keys(ctx, ApiKey.user_id == ctx.caller.user_id)


@router.post(
    "/keys", response_model=KeyCreated, status_code=201, summary="Create a key for one of your units"
)
async def create_my_key(
    body: OwnKeyCreate, ctx: Ctx = Depends(writer("keys:write", lock=False))
) -> KeyCreated:
    ctx.access.unit(body.unit_id)
    ctx.access.require(
        body.unit_id in ctx.access.grants.memberships,
        "you can only create keys for units you belong to",
        body.unit_id,
    )
    return await _issue(ctx, ctx.caller.user_id, body.unit_id, body)


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke one of your keys")
async def revoke_my_key(key_id: KeyId, ctx: Ctx = Depends(writer("keys:write", lock=False))) -> KeyOut:
    key = await _key(ctx, key_id)
    if key.user_id != ctx.caller.user_id:
        raise not_found("key", key_id)  # someone else's key: as if it did not exist
    return await _revoke(ctx, key)


@router.get("/units/{unit_id}/keys", response_model=list[KeyOut], summary="Keys of a unit's members")
async def unit_keys(unit_id: UnitId, ctx: Ctx = Depends(reader("keys:read"))) -> list[KeyOut]:
    ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_read_keys(unit_id), "admins, auditors and instructors list a unit's keys", unit_id
    )
    return await _keys(ctx, ApiKey.unit_id == unit_id)


@router.post(
    "/units/{unit_id}/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Issue a key to a member of a unit",
)
async def issue_key(
    unit_id: UnitId, body: MemberKeyCreate, ctx: Ctx = Depends(writer("keys:write", lock=False))
) -> KeyCreated:
    ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_manage_keys(unit_id), "admins and instructors issue a unit's keys", unit_id
    )
    await require_instructor_reach(ctx, unit_id, [body.user_id])
    return await _issue(ctx, body.user_id, unit_id, body)


@router.delete(
    "/units/{unit_id}/keys/{key_id}", response_model=KeyOut, summary="Revoke a key of a unit's member"
)
async def revoke_unit_key(
    unit_id: UnitId, key_id: KeyId, ctx: Ctx = Depends(writer("keys:write", lock=False))
) -> KeyOut:
    ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_manage_keys(unit_id), "admins and instructors revoke a unit's keys", unit_id
    )
    key = await _key(ctx, key_id)
    if key.unit_id != unit_id:
        raise not_found("key", key_id)
    await require_instructor_reach(ctx, unit_id, [key.user_id])
    return await _revoke(ctx, key)
