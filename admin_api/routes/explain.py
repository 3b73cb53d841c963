"""Explain a budget: every node of a user's path in a unit with cap, used, reserved, room, extras and reset.

The same numbers the gateway decides with (quota's explain reads the compiled
caps and live counters from Redis), so "why was I refused?" has one answer.
"""

from __future__ import annotations

from datetime import date, datetime

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from admin_api.context import Ctx, reader
from admin_api.errors import not_found
from admin_api.ids import SLUG
from core.models import Membership
from quota import Explanation

router = APIRouter(tags=["usage"])


class ExtraOut(BaseModel):
    id: str
    amount: int
    used: int
    reserved: int
    valid_from: date
    valid_to: date
    chargeback: str | None
    valid_now: bool


class MetricOut(BaseModel):
    cap: int | None  # None: no cap of its own (inherits)
    used: int
    reserved: int
    room: int | None  # None: unlimited at this node
    extras: list[ExtraOut]


class NodeOut(BaseModel):
    node: str  # unit id, or member(user,unit) for the member's own cap
    unit: str
    name: str
    kind: str
    period: str
    period_key: str
    resets_at: datetime | None  # None: the period never resets
    metrics: dict[str, MetricOut]


class ExplainOut(BaseModel):
    institution: str
    unit: str
    user: str
    at: datetime
    available: dict[str, int | None]  # the most one request could be funded now (None: unlimited)
    nodes: list[NodeOut]  # member node first, root last


def explanation_out(e: Explanation) -> ExplainOut:
    nodes = [
        NodeOut(
            node=n.node, unit=n.unit, name=n.name, kind=n.kind, period=n.period, period_key=n.period_key,
            resets_at=n.resets_at,
            metrics={
                m: MetricOut(cap=r.cap, used=r.used, reserved=r.reserved, room=r.room,
                             extras=[ExtraOut(**vars(x)) for x in r.extras])
                for m, r in n.metrics.items()
            },
        )
        for n in e.nodes
    ]  # fmt: skip
    return ExplainOut(institution=e.institution, unit=e.unit, user=e.user, at=e.at, available=dict(e.available),
                      nodes=nodes)  # fmt: skip


@router.get("/explain", response_model=ExplainOut, summary="A user's budget in a unit, node by node")
async def explain(
    unit: str = Query(pattern=SLUG),
    user: str | None = Query(default=None, pattern=SLUG, description="default: the caller"),
    ctx: Ctx = Depends(reader("usage:read")),
) -> ExplainOut:
    access = ctx.access
    access.unit(unit)
    who = user or ctx.caller.user_id
    if who != ctx.caller.user_id:
        access.require(access.can_read_usage(unit), "you may only explain your own budget here", unit)
    if await ctx.session.get(Membership, (ctx.institution_id, unit, who)) is None:
        raise not_found("member", f"{who} in {unit}")
    quota = ctx.state.quota
    quota.invalidate(ctx.institution_id)  # another replica may have compiled since: read the current one
    return explanation_out(await quota.explain(ctx.institution_id, unit, who))
