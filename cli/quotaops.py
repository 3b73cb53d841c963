"""Budget operations against the configured PostgreSQL and Redis: apply, rebuild, check.

A rebuild overwrites the spend counters with sums from the ledger, and the ledger lags the counters: a
settle reaches Redis at once but its usage event reaches PostgreSQL only through the gateway's sidecar
(and its spool while the broker is away), Kafka and the consumers. A rebuild while requests are being
settled therefore forgets the ones on their way and funds them again (issue 16 item 2: 18,000 µ funded
on a 3,000 µ cap while the consumer was joining; 31 of 30 admitted once it had caught up). Fencing a
rebuild against live traffic would need every gateway's pending events and every spool to be visible
from here; they are not. So the simplest rule that is always right:

* ``quota rebuild`` refuses while any gateway serves — a gateway process subscribes to the catalog
  channel for its whole life, so ``PUBSUB NUMSUB`` counts them, and reservations in flight show in the
  deadlines set — and says why. ``--offline`` is the operator saying no gateway serves (all stopped,
  e.g. scaled to 0, so their sidecars have handed everything to Kafka or to their spools).
* Whatever is told, the ledger must be known complete before it is read: the consumers' committed
  offsets at the topic's end (waited for, bounded) and this host's spool empty; otherwise the rebuild is
  refused (``usage.lag.LedgerIncomplete``).
* ``org import`` (and any apply) on a Redis that does not hold the institution rebuilds only if nothing is
  compiled when the script runs (``force=False``): a gateway that rebuilt first wins and the import then
  compiles caps only. Until then no gateway can have reserved, so nothing can be missing from a complete
  ledger. If the ledger cannot be shown complete the import leaves Redis alone and the gateways rebuild,
  fenced the same way, on their first request.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from core.channels import CATALOG_CHANNEL
from core.db import make_async_engine
from core.settings import Settings
from gateway.ledger_watch import replicas_behind
from quota import InstitutionNotLoaded, QuotaEngine, keys
from quota.rebuild import recompute_counters
from quota.sources import ledger_scope, load_charges, load_spec
from usage.lag import LedgerIncomplete, settle_ledger
from usage.spool import SPOOL_FILE


class RebuildRefused(RuntimeError):
    """A rebuild now would overwrite counters with a ledger that lags them; the message says why."""


@dataclass
class Applied:
    institution: str
    action: str  # compiled | rebuilt | checked | deferred
    drift: list[str]
    note: str = ""


def _engine(settings: Settings, clock: Callable[[], float]) -> QuotaEngine:
    return QuotaEngine.from_url(settings.redis_url, reservation_ttl=settings.reservation_ttl_seconds,
                                min_output_tokens=settings.min_clamp_tokens, clock=clock)  # fmt: skip


async def serving(redis: Redis, institution: str) -> tuple[int, int]:
    """(gateway processes listening for catalog changes, reservations of this institution in flight)."""
    numsub = await redis.pubsub_numsub(CATALOG_CHANNEL)
    gateways = sum(int(n) for _, n in numsub)
    return gateways, int(await redis.zcard(keys.deadlines(institution)))


def spooled_here(settings: Settings) -> int:
    """Usage events waiting in this host's spool (read-only: the command creates nothing)."""
    path = settings.spool_path / SPOOL_FILE
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute("select count(*) from spool").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet: nothing was ever spooled
        return 0
    finally:
        db.close()


async def ledger_complete(settings: Settings, redis: Redis, wait_seconds: float) -> None:
    """Raise LedgerIncomplete unless every usage event produced so far is in the ledger, as far as can be
    seen from here: this host's spool, the replicas that say they hold events Kafka has not seen
    (gateway/ledger_watch.py), and the consumers' lag."""
    spooled = spooled_here(settings)
    if spooled:
        raise LedgerIncomplete(f"{spooled} usage events wait in the spool at {settings.spool_path}")
    behind = await replicas_behind(redis, settings.kafka_topic)
    if behind:
        raise LedgerIncomplete(f"replicas {', '.join(behind)} hold usage events not yet in Kafka")
    await settle_ledger(settings, wait_seconds)


async def apply_budgets(
    settings: Settings,
    institution: str,
    *,
    rebuild: bool = False,
    check: bool = False,
    offline: bool = False,
    clock: Callable[[], float] = time.time,
    ledger_wait: float = 30.0,
) -> Applied:
    """Make Redis match PostgreSQL for one institution, then tell every gateway to reload it.

    A Redis that never held this institution, or lost it, gets counters rebuilt from the ledger rather
    than fresh caps over empty counters: compiling caps alone there would forget what was spent.
    """
    db = make_async_engine(settings.database_url, pool_size=1)
    quota = _engine(settings, clock)
    now = datetime.fromtimestamp(clock(), UTC)
    try:
        compiled = await quota.is_compiled(institution)
        if rebuild and not offline:
            gateways, holds = await serving(quota.redis, institution)
            if gateways or holds:
                raise RebuildRefused(
                    f"{gateways} gateway processes are serving and {holds} requests of {institution} are in "
                    "flight: the ledger lags the counters (usage events travel through each gateway's "
                    "sidecar, its spool and Kafka), so a rebuild now would forget the requests on their way "
                    "and fund them again. Stop the gateways and run again with --offline; a Redis that "
                    "lost its data needs no command (gateways rebuild it on their first request)."
                )
        if rebuild or not (compiled or check):
            try:
                await ledger_complete(settings, quota.redis, ledger_wait)
            except LedgerIncomplete as exc:
                if rebuild:
                    raise RebuildRefused(f"the ledger is not known to be complete: {exc}") from exc
                return Applied(institution, "deferred", [], f"budgets not applied to Redis: {exc}; gateways "
                               "rebuild them from the ledger once it is complete")  # fmt: skip
        elif check:
            try:  # drift is expected while events are on their way: give them a moment
                await settle_ledger(settings, min(ledger_wait, 10.0))
            except LedgerIncomplete:
                pass
        async with AsyncSession(db) as session:
            spec = await load_spec(session, institution)
            charges = await load_charges(session, spec, now) if (rebuild or check or not compiled) else []
        if check:
            scope = ledger_scope(spec, now)
            counters = recompute_counters(charges)
            drifts = await quota.drift(institution, counters, scope.covers_unit, scope.covers_extra)
            return Applied(institution, "checked", [str(d) for d in drifts])
        if rebuild:
            await quota.rebuild(spec, recompute_counters(charges), force=True)
            action = "rebuilt"
        elif not compiled and await quota.rebuild(spec, recompute_counters(charges), force=False):
            action = "rebuilt"
        else:  # compiled (now, perhaps by a gateway that rebuilt first): caps only, counters kept
            try:
                await quota.compile(spec, existing=True)
                action = "compiled"
            except InstitutionNotLoaded:  # lost since it was looked at (a restart): from the ledger
                await quota.rebuild(spec, recompute_counters(charges), force=False)
                action = "rebuilt"
        await quota.redis.publish(CATALOG_CHANNEL, institution)
        return Applied(institution, action, [])
    finally:
        await quota.close()
        await db.dispose()
