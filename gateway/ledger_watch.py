"""What a rebuild of budget counters from the ledger must know that only the gateways can tell.

A rebuild is right only if the ledger holds every request the counters had charged. Kafka's consumer lag
shows events that reached Kafka; it cannot show the events a replica still holds because the broker is
away from it (in its sidecar's memory or its spool). So every replica says, in Redis, while its usage
events are not flowing to Kafka: a member of ``eq:usage:behind:<topic>`` (one set per usage topic: the
ledger it feeds) scored with an expiry a few seconds ahead, refreshed every second and removed once its producer sends directly again. After Redis lost its
data the set is rebuilt within a second; :func:`ledger_fence` therefore waits two rounds before reading it.

The same round asks the budget engine whether Redis restarted or failed over under us
(``QuotaEngine.check_epoch``): a Redis that came back with only part of its data keeps the compile token
and would otherwise go on admitting against counters older than the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable

from redis.asyncio import Redis

from core.settings import Settings
from quota import QuotaEngine
from usage.lag import LedgerIncomplete, settle_ledger

log = logging.getLogger(__name__)

INTERVAL = 1.0
_EXPIRE_MS = 5_000


def behind_key(topic: str) -> str:
    return f"eq:usage:behind:{topic}"


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def replicas_behind(redis: Redis, topic: str, now_ms: int | None = None) -> list[str]:
    """Replicas whose usage events for ``topic`` are not all flowing to Kafka (their mark has not expired)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return sorted(str(m) for m in await redis.zrangebyscore(behind_key(topic), now, "+inf"))


async def ledger_fence(redis: Redis, topic: str, me: str) -> None:
    """Raise LookupError naming the replicas that hold usage events Kafka has not seen (this one aside: its
    caller checks its own producer). Waits two rounds first, so marks lost with Redis are back."""
    await asyncio.sleep(2 * INTERVAL)
    others = [r for r in await replicas_behind(redis, topic) if r != me]
    if others:
        raise LookupError(f"replicas {', '.join(others)} hold usage events not yet in Kafka")


async def ledger_complete(redis: Redis, settings: Settings, me: str) -> None:
    """Raise LedgerIncomplete unless the ledger holds every usage event: no replica but ``me`` holds events
    Kafka has not seen, and the consumers have written what Kafka has. What any rebuild of counters from the
    ledger waits for first, on a gateway or the admin API alike."""
    try:
        await ledger_fence(redis, settings.kafka_topic, me)
    except LookupError as exc:
        raise LedgerIncomplete(str(exc)) from exc
    await settle_ledger(settings)


async def unmark(redis: Redis, topic: str, me: str) -> None:
    """This replica's events for ``topic`` are all in Kafka."""
    await redis.zrem(behind_key(topic), me)


async def run(
    redis: Redis,
    quota: QuotaEngine,
    events_flowing: Callable[[], bool],
    institutions: Callable[[], Iterable[str]],
    topic: str,
    me: str,
) -> None:
    """Every second: mark or unmark this replica, and check Redis's epoch for the institutions this replica
    serves (not every institution Redis knows: that list can be long). Until cancelled."""
    key = behind_key(topic)
    while True:
        try:
            if events_flowing():
                await unmark(redis, topic, me)
            else:
                await redis.zadd(key, {me: int(time.time() * 1000) + _EXPIRE_MS})
            await redis.zremrangebyscore(key, "-inf", int(time.time() * 1000) - 60_000)
            await quota.check_epoch(list(institutions()))
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis away: the next round tries again
            log.warning("ledger watch round failed", exc_info=True)
        await asyncio.sleep(INTERVAL)
