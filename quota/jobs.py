"""Quota upkeep for the scheduler: plain functions of the settings (usage/jobs.py runs them).

Every gateway replica already sweeps in-process (``QuotaEngine.run_sweeper``);
these give a deployment with no gateway running, or a quiet one, the same
upkeep from the Celery beat. Each is idempotent and safe next to the
replicas' own sweepers.

* ``sweep_expired``: bill holds past their deadline (their gateway died), as
  the replicas' sweepers do; a gateway serving the institution writes their
  ledger rows (``Accounting.run_billing``).
* ``rollover_periods``: counters reset by construction (a new period is a new
  Redis hash, see quota/periods.py), so rollover only has to drop the hashes of
  periods that ended more than ``counter_retention`` ago.
* ``caps_for``: an institution's resolved cost caps per unit, as Redis enforces
  them now (the forecasts compare spend against them). Synchronous and free of
  event loops: its caller may already be running one.

Reconciliation with the ledger is ``eduaiq quota check`` / ``rebuild`` (cli):
drift is expected while usage events are still on their way to the ledger,
so it is reported and repaired on an operator's word, not on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import redis

from core.settings import Settings
from quota import keys
from quota.engine import InstitutionNotLoaded, QuotaEngine


def sweep_expired(settings: Settings) -> int:
    """Release every reservation past its deadline, in every institution; returns how many."""

    async def run() -> int:
        engine = QuotaEngine.from_url(settings.redis_url)
        try:
            return await engine.sweep()
        finally:
            await engine.close()

    return asyncio.run(run())


def rollover_periods(settings: Settings) -> int:
    """Drop counter hashes of long-ended periods in every institution; returns how many."""

    async def run() -> int:
        engine = QuotaEngine.from_url(settings.redis_url)
        dropped = 0
        try:
            for inst in await engine.institutions():
                with contextlib.suppress(InstitutionNotLoaded):
                    dropped += await engine.prune(inst)
            return dropped
        finally:
            await engine.close()

    return asyncio.run(run())


def caps_for(settings: Settings, institution_id: str) -> dict[str, int | None]:
    """{unit id: cost cap in micro-units, None when it inherits}; {} when nothing is compiled."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        raw = client.hget(keys.cfg(institution_id), "snap")
    finally:
        client.close()
    if not raw:
        return {}
    units = json.loads(str(raw))["units"]
    return {uid: (None if u["cap"]["cost"] is None else int(u["cap"]["cost"])) for uid, u in units.items()}
