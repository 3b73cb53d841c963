"""How far the ledger is behind the broker: events produced but not yet committed by the consumers.

Used where an exact answer needs the ledger complete: rebuilding budget counters
after Redis lost them, and the quick start draining the broker before it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time

from core.settings import Settings
from usage.kafka_client import client_config

log = logging.getLogger(__name__)


def consumer_lag(settings: Settings) -> int:
    """Events in the usage topic that the ledger consumer group has not committed yet."""
    from kafka import KafkaConsumer, TopicPartition

    # In the ledger's group but never subscribed: it only reads the group's committed offsets.
    probe = KafkaConsumer(
        group_id=settings.kafka_consumer_group, enable_auto_commit=False, **client_config(settings)
    )
    try:
        probe.topics()  # fetches metadata: without it the partition list may still be empty
        partitions = probe.partitions_for_topic(settings.kafka_topic) or set()
        tps = [TopicPartition(settings.kafka_topic, p) for p in partitions]
        ends = probe.end_offsets(tps) if tps else {}
        return sum(max(0, end - (probe.committed(tp) or 0)) for tp, end in ends.items())
    finally:
        probe.close()


def wait_for_ledger(settings: Settings, timeout: float) -> bool:
    """True once the consumers have caught up; False if they did not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if consumer_lag(settings) == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


async def settle_ledger(settings: Settings, wait_seconds: float = 30.0) -> None:
    """Before reading the ledger as the truth: wait (bounded) for the consumers to catch up. Never
    raises: with the broker or the consumers away the reader goes ahead, and says so in the log."""
    try:
        if not await asyncio.to_thread(wait_for_ledger, settings, wait_seconds):
            log.warning("usage consumers are %.0f s behind; reading an incomplete ledger", wait_seconds)
    except Exception as exc:
        log.warning("cannot read the usage backlog (%s); reading the ledger as it is", exc)
