"""The caller: who they are, their units (for the key hand-off after login) and their roles."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from admin_api.auth import ANY_CALLER
from admin_api.context import Ctx, reader
from admin_api.policy import catalogue, effective_all
from core.models import Institution, User

router = APIRouter(tags=["me"])


class MembershipOut(BaseModel):
    unit_id: str
    unit_name: str | None
    kind: str
    role: str
    archived: bool
    effective_models: list[str]
    default_model: str | None


class ScopeOut(BaseModel):
    unit_id: str
    unit_name: str | None
    role: str


class MeOut(BaseModel):
    user_id: str
    email: str | None
    name: str | None
    institution_id: str
    institution_name: str
    currency: str
    timezone: str
    authenticated_by: str  # saml | oidc | cas | dev | pat
    token_scopes: list[str] | None  # the token's scopes when called with a token
    institution_admin: bool
    api_base_url: str  # what OpenAI-compatible clients (GPT4All) point at
    memberships: list[MembershipOut]
    scopes: list[ScopeOut]


@router.get("/me", response_model=MeOut, summary="The caller, their memberships and their roles")
async def me(ctx: Ctx = Depends(reader(ANY_CALLER))) -> MeOut:
    user = await ctx.session.get(User, (ctx.institution_id, ctx.caller.user_id))
    inst = await ctx.session.get(Institution, ctx.institution_id)
    assert user is not None and inst is not None
    tree = ctx.access.tree
    effective = effective_all(tree, await catalogue(ctx.session, ctx.institution_id))
    memberships = [
        MembershipOut(
            unit_id=uid,
            unit_name=tree.units[uid].name,
            kind=tree.units[uid].kind,
            role=role,
            archived=tree.units[uid].archived,
            effective_models=list(effective.get(uid, ())),
            default_model=tree.units[uid].default_model,
        )
        for uid, role in sorted(ctx.access.grants.memberships.items())
        if uid in tree.units
    ]
    scopes = [
        ScopeOut(unit_id=uid, unit_name=tree.units[uid].name, role=role)
        for role, units in sorted(ctx.access.grants.scopes.items())
        for uid in sorted(units)
        if uid in tree.units
    ]
    scopes_of_token = sorted(ctx.caller.token_scopes) if ctx.caller.token_scopes is not None else None
    return MeOut(
        user_id=user.id, email=user.email, name=user.name, institution_id=inst.id, institution_name=inst.name,
        currency=inst.currency, timezone=inst.timezone, authenticated_by=ctx.caller.method,
        token_scopes=scopes_of_token, institution_admin=ctx.access.institution_admin,
        api_base_url=ctx.state.settings.public_base_url.rstrip("/") + "/v1", memberships=memberships, scopes=scopes,
    )  # fmt: skip
