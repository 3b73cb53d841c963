"""Editing providers, models and prices: through the same config shape the institution file uses.

An edit reads the institution's providers back as the router's
`ProviderConfig`s, changes one entry, and rebuilds the rows with the importer's
own `provider_rows`, which checks the whole section (a model nobody can price,
a fallback to an unknown model) and resolves prices to micro-units once. So a
provider saved through the API is exactly what the same YAML would import.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlmodel import SQLModel, select

from admin_api.context import Ctx, row_label, snapshot
from admin_api.errors import invalid
from admin_api.orgfile.rows import comparable, provider_rows
from admin_api.policy import policy_problems, require_consistent
from core.models import Institution, ModelOffer, Provider
from providers.config import ProviderConfig, parse_providers
from providers.errors import ConfigError
from providers.upstream_policy import UpstreamPolicy, redact_headers, resolved_problems


async def _rows(ctx: Ctx, table: Any) -> list[Any]:
    stmt = select(table).where(table.institution_id == ctx.institution_id)
    return list((await ctx.session.execute(stmt)).scalars().all())


async def current_configs(ctx: Ctx) -> list[ProviderConfig]:
    providers = sorted(await _rows(ctx, Provider), key=lambda p: p.position)
    offers: dict[str, list[ModelOffer]] = defaultdict(list)
    for o in sorted(await _rows(ctx, ModelOffer), key=lambda o: o.position):
        offers[o.provider_id].append(o)
    return parse_providers([p.to_config(offers[p.id], default_prices=False) for p in providers])


def _pk(row: SQLModel) -> tuple[Any, ...]:
    table = type(row).__table__  # type: ignore[attr-defined]
    return tuple(getattr(row, c.name) for c in table.primary_key.columns)


def _snapshot(row: SQLModel | None) -> dict[str, Any] | None:
    """A row for the audit log, a provider's literal credential headers (stored before they were refused)
    redacted: the audit log is read by auditors, who must not learn upstream secrets from it."""
    snap = snapshot(row)
    if snap is not None and isinstance(row, Provider) and isinstance(snap.get("options"), dict):
        snap["options"] = redact_headers(snap["options"])
    return snap


def _config_problems(problems: list[str]) -> Exception:
    return invalid("the provider configuration is not valid",
                   [{"path": p.partition(": ")[0], "message": p.partition(": ")[2] or p} for p in problems],
                   code="provider_config")  # fmt: skip


async def save_configs(ctx: Ctx, configs: list[ProviderConfig], action: str) -> None:
    """Make the rows match `configs`, auditing each row created, changed or removed.

    The operator's upstream policy applies to the whole section: a provider may read only secret
    variables declared for this institution (and for the hosts it sends them to) and reach a non-public
    address only where the operator allowed it (the gateway would disable it otherwise); host names are
    resolved here too, so the admin hears of it at once."""
    inst = await ctx.session.get(Institution, ctx.institution_id)
    assert inst is not None
    policy = UpstreamPolicy.from_settings(ctx.state.settings).for_institution(ctx.institution_id)
    problems = [q for i, p in enumerate(configs) for q in policy.provider_problems(p, f"providers[{i}]")]
    if problems:
        raise _config_problems(problems)
    problems = await resolved_problems(policy, configs)
    if problems:
        raise _config_problems(problems)
    try:
        wanted = provider_rows(ctx.institution_id, configs, inst.currency)
    except ConfigError as exc:
        raise _config_problems(exc.problems) from None
    new_catalog = tuple(dict.fromkeys(r.id for r in wanted if isinstance(r, ModelOffer)))
    old_offers = await _rows(ctx, ModelOffer)
    old_catalog = tuple(dict.fromkeys(o.id for o in sorted(old_offers, key=lambda o: o.position)))
    require_consistent(ctx.access.tree, new_catalog, policy_problems(ctx.access.tree, old_catalog))

    for table in (Provider, ModelOffer):
        existing = {_pk(r): r for r in (old_offers if table is ModelOffer else await _rows(ctx, Provider))}
        for row in (r for r in wanted if isinstance(r, table)):
            current = existing.get(_pk(row))
            if current is None:
                ctx.session.add(row)
                ctx.audit(f"{action}.create", row_label(row), None, _snapshot(row))
            elif comparable(current) != comparable(row):
                before = _snapshot(current)
                for name, value in comparable(row).items():
                    setattr(current, name, value)
                ctx.audit(f"{action}.update", f"{table.__tablename__}:{'/'.join(map(str, _pk(row)))}", before,
                          _snapshot(current))  # fmt: skip
        await ctx.session.flush()
    keep = {_pk(r) for r in wanted}
    for table in (ModelOffer, Provider):
        for row in await _rows(ctx, table):
            if _pk(row) not in keep:
                ctx.audit(f"{action}.delete", row_label(row), _snapshot(row), None)
                await ctx.session.delete(row)
        await ctx.session.flush()
