"""Budget operations against the configured PostgreSQL and Redis: apply, rebuild, check."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from core.channels import CATALOG_CHANNEL
from core.db import make_async_engine
from core.settings import Settings
from quota import QuotaEngine
from quota.rebuild import recompute_counters
from quota.sources import load_charges, load_spec


@dataclass
class Applied:
    institution: str
    action: str  # compiled | rebuilt
    drift: list[str]


def _engine(settings: Settings) -> QuotaEngine:
    return QuotaEngine.from_url(settings.redis_url, reservation_ttl=settings.reservation_ttl_seconds,
                                min_output_tokens=settings.min_clamp_tokens)  # fmt: skip


async def apply_budgets(
    settings: Settings, institution: str, *, rebuild: bool = False, check: bool = False
) -> Applied:
    """Make Redis match PostgreSQL for one institution, then tell every gateway to reload it.

    A Redis that never held this institution, or lost it, gets counters rebuilt from the ledger rather
    than fresh caps over empty counters: compiling caps alone there would forget what was spent.
    """
    db = make_async_engine(settings.database_url, pool_size=1)
    quota = _engine(settings)
    try:
        async with AsyncSession(db) as session:
            spec = await load_spec(session, institution)
            charges = (
                await load_charges(session, spec)
                if (rebuild or check or not await quota.is_compiled(institution))
                else []
            )
        if check:
            drifts = await quota.drift(institution, recompute_counters(charges))
            return Applied(institution, "checked", [str(d) for d in drifts])
        if rebuild or not await quota.is_compiled(institution):
            await quota.rebuild(spec, recompute_counters(charges), force=True)
            action = "rebuilt"
        else:
            await quota.compile(spec)
            action = "compiled"
        await quota.redis.publish(CATALOG_CHANNEL, institution)
        return Applied(institution, action, [])
    finally:
        await quota.close()
        await db.dispose()
