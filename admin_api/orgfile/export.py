"""The database as an institution file: what `org export` prints and `org import` takes back unchanged.

API keys are not exported: only their hashes are stored. Archived units are
left out, as they would be in a file someone wrote by hand.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.orgfile.rows import SCOPE_FIELDS, membership_end
from core.models import (
    AdminScope,
    BudgetRule,
    Extra,
    Institution,
    Membership,
    ModelOffer,
    Provider,
    RosterSettings,
    ScimSettings,
    Unit,
    User,
)
from core.money import from_micro, plain_number
from providers.upstream_policy import redact_headers


async def _rows(session: AsyncSession, table: Any, inst: str) -> list[Any]:
    return list((await session.execute(select(table).where(table.institution_id == inst))).scalars().all())


def _amount(metric: str, value: int) -> int | float:
    return plain_number(from_micro(value)) if metric == "cost" else value


def last_day(ends_at: datetime, tz: ZoneInfo) -> date:
    """The file's `until` for a membership's end: the day whose close (`membership_end`) it is, so an export
    imports back to the same end, also where a day starts at 01:00 (DST beginning at midnight, as in
    America/Santiago); an end inside a day, set through the admin API, exports as that day: re-imported, it
    ends as that day closes."""
    local = ends_at.astimezone(tz).date()
    for day in (local - timedelta(days=1), local):
        if membership_end(day, tz) == ends_at:
            return day
    return (ends_at.astimezone(tz) - timedelta(microseconds=1)).date()


async def export_org(session: AsyncSession, inst_id: str) -> dict[str, Any]:
    inst = await session.get(Institution, inst_id)
    if inst is None:
        raise LookupError(f"no institution {inst_id!r}")
    tz = ZoneInfo(inst.timezone)
    units = sorted(  # a roster's classes are the registrar's, not the file's (eduaiq roster import)
        (u for u in await _rows(session, Unit, inst_id) if not u.archived and u.source != "roster"),
        key=lambda u: u.position,
    )
    rules: dict[str, list[BudgetRule]] = defaultdict(list)
    for r in await _rows(session, BudgetRule, inst_id):
        rules[r.unit_id].append(r)
    extras: dict[str, list[Extra]] = defaultdict(list)
    for e in sorted(await _rows(session, Extra, inst_id), key=lambda e: e.id):
        extras[e.unit_id].append(e)
    members: dict[str, list[Membership]] = defaultdict(list)
    for m in sorted(await _rows(session, Membership, inst_id), key=lambda m: m.user_id):
        members[m.unit_id].append(m)
    scopes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in sorted(await _rows(session, AdminScope, inst_id), key=lambda s: s.user_id):
        scopes[(s.unit_id, s.role)].append(s.user_id)
    children: dict[str | None, list[Unit]] = defaultdict(list)
    for u in units:
        children[u.parent_id].append(u)

    def unit_doc(u: Unit) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": u.id, "kind": u.kind}
        if u.name:
            doc["name"] = u.name
        budget: dict[str, Any] = {}
        if u.period:
            budget["period"] = u.period
        cap: dict[str, Any] = {}
        for r in sorted(rules[u.id], key=lambda r: r.metric):
            if r.scope == "unit":
                budget[r.metric] = (
                    {"fixed": _amount(r.metric, r.amount or 0)} if r.mode == "fixed"
                    else {"percent": plain_number(r.ratio or 0)}
                )  # fmt: skip
            else:
                cap[r.metric] = (
                    {"fixed": _amount(r.metric, r.amount or 0)} if r.mode == "fixed"
                    else {"fair_share": plain_number(r.ratio or 0)}
                )  # fmt: skip
        if budget:
            doc["budget"] = budget
        if cap:
            doc["member_cap"] = cap
        for name in ("limits", "member_limits"):
            if (u.limits or {}).get(name):
                doc[name] = dict(u.limits[name])  # type: ignore[index]
        if u.models is not None:
            doc["models"] = list(u.models)
        if u.default_model:
            doc["default_model"] = u.default_model
        if extras[u.id]:
            doc["extras"] = [
                {"id": e.id, e.metric: _amount(e.metric, e.amount), "valid_from": e.valid_from,
                 "valid_to": e.valid_to, **({"chargeback": e.chargeback} if e.chargeback else {})}
                for e in extras[u.id]
            ]  # fmt: skip
        if members[u.id]:
            doc["members"] = [
                {
                    "user": m.user_id,
                    "role": m.role,
                    **({"until": last_day(m.ends_at, tz)} if m.ends_at else {}),
                }
                for m in members[u.id]
            ]
        for field_name, role in SCOPE_FIELDS.items():
            if scopes[(u.id, role)]:
                doc[field_name] = scopes[(u.id, role)]
        kids = children[u.id]
        if kids:
            doc["children"] = [unit_doc(k) for k in kids]
        return doc

    providers = sorted(await _rows(session, Provider, inst_id), key=lambda p: p.position)
    offers: dict[str, list[ModelOffer]] = defaultdict(list)
    for o in sorted(await _rows(session, ModelOffer, inst_id), key=lambda o: o.position):
        offers[o.provider_id].append(o)
    doc: dict[str, Any] = {
        "institution": {"id": inst.id, "name": inst.name, "currency": inst.currency, "timezone": inst.timezone,
                        "semesters": inst.semesters},
        "providers": [_plain(redact_headers(p.to_config(offers[p.id], default_prices=False))) for p in providers],
        **({"fair_share": inst.fair_share} if inst.fair_share else {}),
        "units": [unit_doc(r) for r in children[None]],
        "users": [
            {k: v for k, v in {"id": u.id, "email": u.email, "name": u.name, "sso_subject": u.sso_subject}.items()
             if v is not None}
            for u in sorted(await _rows(session, User, inst_id), key=lambda u: u.id)
        ],
    }  # fmt: skip
    if inst.sso:
        doc["sso"] = inst.sso
    roster = await session.get(RosterSettings, inst_id)
    if roster is not None:
        doc["roster"] = roster.config
    scim = await session.get(ScimSettings, inst_id)
    if scim is not None:
        doc["scim"] = scim.config
    return doc


def _plain(value: Any) -> Any:
    """Decimals as plain numbers, so the YAML reads 0.05 rather than a tagged object."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return plain_number(value) if isinstance(value, Decimal) else value


def dump_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110)
