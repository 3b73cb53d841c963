"""Rate limits of a unit, the institution's fair-share weights, and live use against every limit.

Limits are edited like budgets: by an admin above the unit, audited, and applied by every gateway
replica to its very next request (the save recompiles the institution under a new token). Live use is
read from the same Redis windows the gateways count in (60 one-second buckets per limit node), so the
dashboard shows what the next request will be judged against.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from sqlmodel import col, select

from admin_api.context import Ctx, reader, row_label, snapshot, writer
from admin_api.errors import ApiError, forbidden, invalid
from admin_api.ids import SLUG, UnitId
from admin_api.orgfile.checks import fair_share_checks
from admin_api.orgfile.schema import FairShare
from core.models import Institution, Membership, ModelOffer, Provider
from providers.config import LimitsConfig
from quota.keys import (
    limit_leases,
    limit_member,
    limit_member_key,
    limit_model,
    limit_provider,
    limit_unit,
    limit_window,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["limits"])

WINDOW_SECONDS = 60


class UnitLimits(BaseModel):
    """A unit's `limits` (its whole subtree together) and `member_limits` (each member on their own)."""

    model_config = ConfigDict(extra="forbid")

    limits: LimitsConfig | None = None
    member_limits: LimitsConfig | None = None


class UnitLimitsOut(UnitLimits):
    unit_id: str


class Use(BaseModel):
    requests: int  # admitted in the last 60 s (1 s buckets)
    tokens: int  # reserved in the last 60 s, corrected as requests settle
    concurrent: int  # in progress now


class LiveNode(BaseModel):
    node: str  # u:<unit> | m:<unit> | p:<provider> | pm:<provider>|<model>
    what: str  # unit | member | provider | model
    subject: str  # the unit, provider or model it limits (and the member, for member limits)
    limits: LimitsConfig
    used: Use


class LiveOut(BaseModel):
    at_ms: int
    nodes: list[LiveNode]


def _doc(body: UnitLimits) -> dict[str, Any] | None:
    doc = {
        name: value.model_dump(mode="json", exclude_none=True)
        for name in ("limits", "member_limits")
        if (value := getattr(body, name)) is not None
    }
    return doc or None


def _out(unit_id: str, stored: dict[str, Any] | None) -> UnitLimitsOut:
    stored = stored or {}
    return UnitLimitsOut(
        unit_id=unit_id, limits=stored.get("limits"), member_limits=stored.get("member_limits")
    )


@router.get("/units/{unit_id}/limits", response_model=UnitLimitsOut, summary="A unit's rate limits")
async def get_limits(unit_id: UnitId, ctx: Ctx = Depends(reader("org:read"))) -> UnitLimitsOut:
    unit = ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_unit(unit_id), "you have no role in this unit", unit_id)
    return _out(unit_id, unit.limits)


@router.put("/units/{unit_id}/limits", response_model=UnitLimitsOut, summary="Replace a unit's rate limits")
async def put_limits(
    unit_id: UnitId, body: UnitLimits, ctx: Ctx = Depends(writer("org:write"))
) -> UnitLimitsOut:
    unit = ctx.access.unit(unit_id)
    ctx.access.require(
        ctx.access.can_edit_rules(unit_id), "only an admin above this unit sets its limits", unit_id
    )
    before = snapshot(unit)
    unit.limits = _doc(body)
    after = snapshot(unit)
    if after != before:
        ctx.audit("limits.update", row_label(unit), before, after)
    await ctx.commit()
    return _out(unit_id, unit.limits)


async def _institution(ctx: Ctx) -> Institution:
    inst = await ctx.session.get(Institution, ctx.institution_id)
    if inst is None:  # the caller's own institution: only gone if deleted under them
        raise forbidden("no such institution")
    return inst


@router.get("/fair-share", response_model=FairShare, summary="How queued models share slots between units")
async def get_fair_share(ctx: Ctx = Depends(reader("org:read"))) -> FairShare:
    ctx.access.require(
        ctx.access.can_read_catalog(), "the fair-share weights are for admins, finance and auditors"
    )
    return FairShare.model_validate((await _institution(ctx)).fair_share or {})


@router.put("/fair-share", response_model=FairShare, summary="Replace the fair-share weights")
async def put_fair_share(body: FairShare, ctx: Ctx = Depends(writer("org:write"))) -> FairShare:
    if not ctx.access.institution_admin:
        raise forbidden("only institution admins set the fair-share weights")
    doc = body.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    units = ctx.access.tree.units.values()
    names: set[Any] = {u.id for u in units if not u.archived} | {u.kind for u in units if not u.archived}
    problems = fair_share_checks(doc, names, base="")
    if problems:
        raise invalid("the fair-share weights are not valid",
                      [{"path": p.lstrip("."), "message": m} for p, m in problems])  # fmt: skip
    inst = await _institution(ctx)
    before = snapshot(inst)
    inst.fair_share = doc
    after = snapshot(inst)
    if after != before:
        ctx.audit("fair_share.update", row_label(inst), before, after)
    await ctx.commit()
    return body


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _use(ctx: Ctx, suffix: str, now_ms: int) -> Use:
    """Sum the buckets still in the window (a bucket of second s counts until second s+60 starts) and the
    leases not yet past their deadline: the same rule the reservation applies."""
    inst, sec = ctx.institution_id, now_ms // 1000
    buckets = await ctx.state.redis.hgetall(limit_window(inst, suffix))
    req = tok = 0
    for field, value in buckets.items():
        name = _text(field)
        if name.isdigit() and int(name) > sec - WINDOW_SECONDS:
            r, _, t = _text(value).partition(" ")
            req, tok = req + int(r), tok + int(t or 0)
    cc = await ctx.state.redis.zcount(limit_leases(inst, suffix), now_ms + 1, "+inf")
    return Use(requests=req, tokens=tok, concurrent=int(cc))


@router.get(
    "/limits/live", response_model=LiveOut, summary="Live use against the limits of a unit and the catalog"
)
async def live_limits(
    ctx: Ctx = Depends(reader("org:read")),
    unit: str | None = Query(default=None, pattern=SLUG, description="a unit: its limits and those above it"),
    user: str | None = Query(
        default=None, max_length=128, description="a member: their use under member limits"
    ),
) -> LiveOut:
    nodes: list[tuple[str, str, str, str, dict[str, Any]]] = []  # node, suffix, what, subject, limits
    if unit is not None:
        ctx.access.unit(unit)
        ctx.access.require(ctx.access.can_read_unit(unit), "you have no role in this unit", unit)
        tree = ctx.access.tree
        if user is not None:
            ctx.access.require(ctx.access.can_read_usage(unit), "you may not read members' use here", unit)
            # A member window under unit A counts the member's use anywhere below A: only someone of this
            # unit's subtree, and only the windows of units whose use the caller may read.
            member = (await ctx.session.execute(select(Membership.unit_id).where(
                Membership.institution_id == ctx.institution_id, Membership.user_id == user,
                col(Membership.unit_id).in_(tree.subtree(unit))).limit(1))).first()  # fmt: skip
            if member is None:
                raise forbidden(f"{user!r} is not a member of this unit or a unit below it", unit=unit)
        for uid in reversed(tree.path(unit)):
            stored = tree.units[uid].limits or {}
            if stored.get("limits"):
                nodes.append((limit_unit(uid), limit_unit(uid), "unit", uid, stored["limits"]))
            if stored.get("member_limits") and user is not None and ctx.access.can_read_usage(uid):
                node = limit_member(uid)
                nodes.append(
                    (node, limit_member_key(node, user), "member", f"{uid}:{user}", stored["member_limits"])
                )
    elif not ctx.access.can_read_catalog():
        raise forbidden("live use of the catalog's limits is for admins, finance and auditors")
    if ctx.access.can_read_catalog():
        inst = ctx.institution_id
        for p in (await ctx.session.execute(select(Provider).where(Provider.institution_id == inst)
                                            .order_by(col(Provider.position)))).scalars():  # fmt: skip
            if p.options.get("limits"):
                node = limit_provider(p.id)
                nodes.append((node, node, "provider", p.id, p.options["limits"]))
        for o in (await ctx.session.execute(select(ModelOffer).where(ModelOffer.institution_id == inst)
                                            .order_by(col(ModelOffer.position)))).scalars():  # fmt: skip
            if o.options.get("limits"):
                node = limit_model(o.provider_id, o.id)
                nodes.append((node, node, "model", f"{o.provider_id}/{o.id}", o.options["limits"]))
    try:
        secs, micros = await ctx.state.redis.time()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        out = [
            LiveNode(node=node, what=what, subject=subject, limits=LimitsConfig.model_validate(lim),
                     used=await _use(ctx, suffix, now_ms))
            for node, suffix, what, subject, lim in nodes
        ]  # fmt: skip
    except (RedisError, OSError):  # the cause (host, port) is for the log, not the caller
        log.warning("live limits: Redis unreachable", exc_info=True)
        raise ApiError(
            503, "redis_unavailable", "live use cannot be read while Redis is unreachable"
        ) from None
    return LiveOut(at_ms=now_ms, nodes=out)
