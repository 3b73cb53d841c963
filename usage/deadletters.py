"""Dead-lettered usage events back into the ledger, once they are fixed: exactly once.

The consumer dead-letters what it cannot store (`usage/consumer.py`): a line that is
not a valid event, a row the database refused, a tombstone. Once the cause is fixed
(the database accepts the row again, a newer version of this code understands the
event), `eduaiq usage replay-dead-letters` reads the whole dead-letter topic, validates
every event again with today's code and stores the valid ones through the consumer's
own path (`LedgerWriter` -> `usage.ledger.store`): `INSERT ... ON CONFLICT (event_id)
DO NOTHING`, with rollups only for the rows actually inserted. So replaying twice, or
replaying an event the ledger already has, writes nothing more. Nothing is deleted
from the topic (Kafka cannot); what is still invalid is listed with where it came from.

The topic is read without a consumer group, from its start until nothing more arrives:
a replay is a whole pass, repeatable at will.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psycopg2
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from core.settings import Settings
from usage.consumer import ConsumerStats, LedgerWriter
from usage.events import BadEvent, UsageEvent, decode, split_record
from usage.kafka_client import client_config, dead_letter_topic

# An operator waits for an answer: PostgreSQL away this long fails the command instead of retrying on.
_DB_PATIENCE_SECONDS = 30.0


@dataclass(frozen=True)
class StillBad:
    """A dead letter that still cannot be stored, and where it sits in the dead-letter topic."""

    partition: int
    offset: int
    reason: str  # today's reason; `original` is the one the consumer recorded
    original: str


@dataclass
class ReplayReport:
    records: int = 0
    valid: int = 0
    stored: int = 0  # new ledger rows (with a dry run: rows that would be new)
    already: int = 0  # valid events the ledger already had (a previous replay, or never lost)
    still_bad: list[StillBad] = field(default_factory=list)

    def summary(self, dry_run: bool) -> str:
        verb = "would store" if dry_run else "stored"
        return (
            f"{self.records} dead-letter records: {self.valid} valid events, {verb} {self.stored}, "
            f"{self.already} already in the ledger, {len(self.still_bad)} still bad"
        )


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> str:
    for key, value in headers or []:
        if key == name:
            return value.decode(errors="replace")
    return ""


@dataclass(frozen=True)
class Found:
    event: UsageEvent
    partition: int
    offset: int
    original: str


def read_dead_letters(
    settings: Settings, topic: str | None = None
) -> tuple[int, list[Found], list[StillBad]]:
    """Every record of the dead-letter topic up to its current end: (records, valid events, still bad)."""
    name = dead_letter_topic(topic or settings.kafka_topic)
    consumer = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False)
    records = 0
    events: list[Found] = []
    bad: list[StillBad] = []
    try:
        partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        if not tps:
            return 0, [], []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # Read until a poll finds nothing more. The end offsets alone are not enough: tansu (the test and
        # quick-start broker) reports a partition's end as 1 after one batch of several records.
        while polled := consumer.poll(timeout_ms=2000):
            for batch in polled.values():
                for r in batch:
                    records += 1
                    original = _header(r.headers, "error")
                    lines = split_record(r.value) if r.value else []
                    if not lines:
                        bad.append(StillBad(r.partition, r.offset, "no event in the record", original))
                    for line in lines:
                        try:
                            events.append(Found(decode(line), r.partition, r.offset, original))
                        except BadEvent as exc:
                            bad.append(StillBad(r.partition, r.offset, f"BadEvent: {exc}", original))
    finally:
        consumer.close()
    return records, events, bad


def _known(database_url: str, event_ids: list[str]) -> set[str]:
    conn = psycopg2.connect(database_url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("select event_id from usage_event where event_id = any(%s)", (event_ids,))
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def replay_dead_letters(
    settings: Settings, *, dry_run: bool = False, topic: str | None = None
) -> ReplayReport:
    records, found, bad = read_dead_letters(settings, topic)
    where = {f.event.event_id: f for f in found}
    unique = [f.event for f in where.values()]
    report = ReplayReport(records=records, valid=len(unique), still_bad=bad)
    if not unique:
        return report
    if dry_run:
        known = _known(settings.database_url, [e.event_id for e in unique])
        report.already = len(known)
        report.stored = len(unique) - len(known)
        return report
    writer = LedgerWriter(
        settings.database_url, threading.Event(), ConsumerStats(), retry_for=_DB_PATIENCE_SECONDS
    )
    try:
        inserted, refused = writer.write(unique)
    finally:
        writer.close()
    report.stored = inserted
    report.already = len(unique) - len(refused) - inserted
    for e, why in refused:
        f = where[e.event_id]
        report.still_bad.append(
            StillBad(f.partition, f.offset, f"refused by the database: {why}", f.original)
        )
    return report
