"""Everything one gateway process holds for its lifetime, built at start-up and closed at shutdown.

The hot path reads only memory and Redis: keys are cached here, institutions
are compiled into the catalog, budgets live in Redis. PostgreSQL is read on a
key-cache miss and when configuration changes; Kafka is written by a
producer process beside the gateway (`usage/sidecar.py`).
"""

from __future__ import annotations

import asyncio
import gc
import logging

from redis.asyncio import BlockingConnectionPool, Redis

from core.channels import CATALOG_CHANNEL
from core.db import make_async_engine
from core.settings import Settings
from gateway import ledger_watch
from gateway.accounting import Accounting
from gateway.auth import KeyCache
from gateway.bounded import bounded, bounded_all
from gateway.catalog import Catalog
from gateway.meter import Outcome, emit
from gateway.slots import SlotGate
from providers.http import PoolLimits, UpstreamPool
from providers.upstream_policy import UpstreamPolicy
from quota import QuotaEngine
from quota.fairq import FairQueue
from quota.sources import make_loader
from usage.lag import LedgerIncomplete
from usage.sidecar import ProducerSidecar

log = logging.getLogger(__name__)

_STEP_SECONDS = 3.0  # each step of close() but the usage hand-over
_PRODUCER_SECONDS = 35.0  # the producer's close waits up to 30 s for its sidecar, then kills it


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = make_async_engine(settings.database_url)
        self.keys = KeyCache(self.db, settings.key_cache_seconds, grace=settings.membership_grace_seconds)
        # Blocking pool: a burst waits a moment for a connection instead of failing with "too many".
        # Timeouts from the settings (EDUAIQ_REDIS_*): redis-py's defaults wait for ever on a silent Redis.
        pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=64, timeout=10,
                                               decode_responses=True, **settings.redis_options())  # fmt: skip
        self.redis = Redis(connection_pool=pool)
        self.http: UpstreamPool | None = None
        self.catalog: Catalog | None = None
        self.producer: ProducerSidecar | None = None
        self.quota = QuotaEngine(
            self.redis,
            reservation_ttl=settings.reservation_ttl_seconds,
            min_output_tokens=settings.min_clamp_tokens,
            limit_lease=settings.limit_lease_seconds,
            loader=make_loader(self.db, self._drain_own_events),
        )
        self._replica = ledger_watch.replica_id()
        # Self-hosted models' slots: one fair queue client per process, woken over one pub/sub connection.
        self.fair_queue = FairQueue(self.redis, self._replica, settings.limit_lease_seconds)
        self.slots: SlotGate | None = SlotGate(self.fair_queue)
        self.accounting = Accounting(self.quota, self._emit, self._chargebacks, self._flush_events,
                                     lease=settings.limit_lease_seconds, fair_queue=self.fair_queue)  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []

    def _emit(self, o: Outcome, event_id: str | None) -> None:
        if self.producer is None:
            raise RuntimeError("the usage producer is not running")
        emit(self.producer, o, event_id)

    async def _flush_events(self, within: float) -> bool:
        return self.producer is not None and await self.producer.flush(within)

    def _served_institutions(self) -> list[str]:
        return list(self.catalog.views) if self.catalog is not None else []

    def _chargebacks(self, institution: str) -> dict[str, str | None]:
        view = self.catalog.views.get(institution) if self.catalog is not None else None
        return dict(view.chargebacks) if view is not None else {}

    def _events_flowing(self) -> bool:
        return self.producer is not None and self.producer.stats().direct

    def _served(self) -> list[str]:
        return list(self.catalog.views) if self.catalog is not None else []

    async def _watch_ledger(self) -> None:
        topic = self.settings.kafka_topic
        await ledger_watch.run(
            self.redis, self.quota, self._events_flowing, self._served, topic, self._replica
        )

    async def _drain_own_events(self) -> None:
        """Before counters are rebuilt from the ledger: our own pending events into Kafka, and the consumers
        through Kafka into the ledger, so requests settled just before Redis lost its data are counted."""
        if self.producer is not None:
            # Events still in our pipe or spool are not in Kafka, so no consumer lag can show them: refuse
            # (the request answers 503 and is retried) rather than rebuild without them.
            # A producer starting up (or replaying its spool) goes direct within moments: wait a little.
            flushed = await self.producer.flush(10.0)
            for _ in range(50 if flushed else 0):  # up to 10 s
                if self.producer.stats().direct:
                    break
                await asyncio.sleep(0.2)
            if not flushed or not self.producer.stats().direct:
                raise LedgerIncomplete("this gateway's usage events are not all in Kafka (broker away?)")
        # and no other replica holds events Kafka has not seen, and the consumers caught up
        await ledger_watch.ledger_complete(self.redis, self.settings, self._replica)

    async def start(self) -> None:
        # The operator's policy (declared secret variables, allowed non-public upstreams) and the pool's
        # bounds: provider entries are written by institution admins, not by the operator.
        policy = UpstreamPolicy.from_settings(self.settings)
        s = self.settings
        limits = PoolLimits(s.upstream_max_connections_per_host, s.upstream_max_response_bytes,
                            s.upstream_max_event_bytes, s.upstream_max_stream_bytes,
                            s.upstream_max_buffered_bytes)  # fmt: skip
        self.http = UpstreamPool(limits=limits, policy=policy)
        self.catalog = Catalog(self.db, self.http, policy)
        # An institution whose budgets are not in Redis yet (first start, or Redis lost its data) is
        # compiled and rebuilt from the ledger by the quota engine on its first request.
        await self.catalog.load_all()
        self.producer = ProducerSidecar(self.settings)
        await self.producer.start()
        # What start-up loaded (modules, price maps, compiled institutions) lives as long as the process:
        # frozen, the collector's full passes skip it. Unfrozen, each full pass walked ~400k objects and
        # stalled every request in flight for ~100 ms (the p99 of bench/gateway.py at concurrency 64).
        gc.collect()  # so that no garbage is frozen with it
        gc.freeze()
        # A request allocates hundreds of short-lived objects, almost all freed by reference counting;
        # at the default threshold (700) the young-generation collector ran every few requests. Every
        # 20,000 allocations it costs little memory and took gateway CPU per request from ~225 to ~200 µs
        # (non-stream) and ~370 to ~260 µs (stream) in bench/gateway.py's concurrency-64 runs.
        gc.set_threshold(20_000, 20, 20)
        self._tasks = [
            asyncio.create_task(self.quota.run_sweeper(), name="quota-sweeper"),
            asyncio.create_task(self.accounting.run_leases(), name="quota-leases"),
            asyncio.create_task(
                self.accounting.run_billing(self._served_institutions), name="quota-unsettled"
            ),
            asyncio.create_task(self._watch_ledger(), name="ledger-watch"),
            asyncio.create_task(self.quota.listen_invalidations(), name="quota-invalidations"),
            asyncio.create_task(self._listen_catalog(), name="catalog-invalidations"),
            asyncio.create_task(self.fair_queue.listen(), name="fair-queue-wakeups"),
        ]

    async def _listen_catalog(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(CATALOG_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message" and self.catalog is not None:
                        await self.catalog.reload(str(message["data"]))
                        self.keys.forget()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarting: keep listening once it is back
                log.warning("catalog invalidation listener lost Redis; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Every step is bounded (gateway/bounded.py): a background task or a client stuck on an
        unreachable Redis or PostgreSQL cannot hold the process, and the usage hand-over (the producer's
        close) runs whatever the steps before it did."""
        for task in self._tasks:
            task.cancel()
        await bounded_all(self._tasks, _STEP_SECONDS, "stopping the background tasks")
        if self.catalog is not None:
            await bounded(self.catalog.close(), _STEP_SECONDS, "closing the catalog")
        # Requests still running past the cut leave their holds to the sweeper rather than settle once the
        # pipeline that records them is gone.
        await bounded(self.accounting.stop_settling(), _STEP_SECONDS, "waiting for the settles in progress")
        if self.producer is not None:
            await bounded(self.producer.close(), _PRODUCER_SECONDS, "handing the usage events over")
            if self.producer.all_in_kafka():
                # The watch's last round may have marked us behind (a slow send, start-up); the mark would
                # refuse an operator's offline rebuild for seconds after a clean stop.
                topic = self.settings.kafka_topic
                await bounded(ledger_watch.unmark(self.redis, topic, self._replica), _STEP_SECONDS,
                              "saying every usage event is in Kafka")  # fmt: skip
        if self.http is not None:
            await bounded(self.http.close(), _STEP_SECONDS, "closing the upstream connections")
        await bounded(self.quota.close(), _STEP_SECONDS, "closing the budget engine")
        await bounded(self.db.dispose(), _STEP_SECONDS, "closing the database pool")
