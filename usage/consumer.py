"""The ledger consumer: Kafka -> PostgreSQL, exactly once per event id.

Order of work for each batch: write the events and their rollups in one database
transaction, commit it, and only then commit the Kafka offsets. A crash between the
two commits redelivers the batch, which the ledger recognises by event id and skips
(rollups included). Several consumers in one group share the topic's partitions.

PostgreSQL being down never skips a batch: the write is retried with backoff until
it succeeds (or the consumer is asked to stop, leaving the offsets uncommitted).
A record holds one or more events (`usage.events.pack`). An event that can never be
stored (not a usage event, an unknown schema version, a value the database refuses)
goes to the dead-letter topic `<topic>.dlq` by itself with the reason and where it came
from (topic, partition, offset headers), while the rest of its record is stored, so one
bad event cannot stop billing for everyone. A record with no value (a tombstone) is
dead-lettered the same way: it can only be a mistake on a usage topic.

The consumer creates both topics when they are missing (brokers often refuse to
auto-create). A dead-letter send that cannot succeed (the broker refusing or away)
is retried for `EDUAIQ_DEAD_LETTER_SEND_SECONDS`, then the consumer stops with
`DeadLetterUnavailable` without committing the batch: nothing is skipped, and the
restarted consumer reads the batch again. `eduaiq usage replay-dead-letters` puts
dead-lettered events back into the ledger once they pass validation
(`usage/deadletters.py`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from psycopg2.extensions import connection as Connection

from core.settings import Settings, load_settings
from usage import ledger
from usage.events import BadEvent, UsageEvent, decode, events_in, split_record
from usage.kafka_client import abandon, client_config, dead_letter_topic, ensure_topic

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Letter:
    """A bad event as it is dead-lettered: its record's key, its own line, and where the record was."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int

    def headers(self, reason: str) -> list[tuple[str, bytes]]:
        return [
            ("error", reason.encode()[:1000]),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
        ]


class DeadLetterUnavailable(RuntimeError):
    """The dead-letter topic could not take a batch's bad events in time: the consumer stops with the
    batch uncommitted rather than skip it or retry for ever."""


# Errors after which the same write can succeed later: the server is away, restarting, or chose us as a
# deadlock victim. Anything else about a row (a value out of range) will fail forever: dead-letter it.
# (psycopg2 raises a plain ValueError for a NUL character in a string, before the server sees it.)
_ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError)


@dataclass
class ConsumerStats:
    batches: int = 0
    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    db_retries: int = 0
    commit_failures: int = 0
    assigned: set[TopicPartition] = field(default_factory=set)


class _Stopped(Exception):
    """Raised inside a retry loop when the consumer is asked to stop: leave the batch uncommitted."""


class LedgerWriter:
    """One psycopg2 connection, reopened whenever PostgreSQL goes away."""

    def __init__(
        self,
        database_url: str,
        stop: threading.Event,
        stats: ConsumerStats,
        *,
        retry_for: float | None = None,
    ) -> None:
        """`retry_for`: give up (re-raise) after PostgreSQL has been away this long; None, the consumer's
        choice, waits for it however long it takes. An operator's command wants an answer instead."""
        self._url = database_url
        self._stop = stop
        self._stats = stats
        self._retry_for = retry_for
        self._conn: Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, events: Sequence[UsageEvent]) -> tuple[int, list[tuple[UsageEvent, str]]]:
        """Store the batch; return (new rows, events the database refuses and why)."""
        try:
            return self._retry(functools.partial(self._store, events=events)), []
        except _ROW_ERRORS:
            # Find the bad rows one by one; the good ones are stored exactly as in a batch.
            inserted, refused = 0, []
            for e in events:
                try:
                    inserted += self._retry(functools.partial(self._store, events=[e]))
                except _ROW_ERRORS as exc:
                    refused.append((e, f"{type(exc).__name__}: {exc}".strip()))
            return inserted, refused

    @staticmethod
    def _store(conn: Connection, events: Sequence[UsageEvent]) -> int:
        try:
            with conn.cursor() as cur:
                n = ledger.store(cur, events)
            conn.commit()
            return n
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise

    def _retry(self, work: Callable[[Connection], T]) -> T:
        delay = 0.2
        give_up = None if self._retry_for is None else time.monotonic() + self._retry_for
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg2.connect(self._url, connect_timeout=5)
                return work(self._conn)
            except _ROW_ERRORS:
                raise
            except (
                psycopg2.OperationalError,
                psycopg2.InterfaceError,
                psycopg2.errors.SerializationFailure,
                psycopg2.errors.DeadlockDetected,
                psycopg2.errors.UndefinedTable,
            ) as exc:
                self._stats.db_retries += 1
                if give_up is not None and time.monotonic() >= give_up:
                    raise
                log.warning("ledger write failed (%s); retrying in %.1fs", str(exc).strip(), delay)
                self.close()
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)


class _DeadLetters:
    def __init__(self, settings: Settings, topic: str, stop: threading.Event) -> None:
        self._settings = settings
        self._topic = dead_letter_topic(topic)
        self._stop = stop
        self._bound = settings.dead_letter_send_seconds
        self._producer: KafkaProducer | None = None

    def send(self, items: Sequence[tuple[Letter, str]]) -> None:
        """Returns only once the broker has them: their offsets are committed right after. Each bad
        event goes alone, so one bad line does not take the good events of its record with it.
        Raises `DeadLetterUnavailable` after `EDUAIQ_DEAD_LETTER_SEND_SECONDS` of failed attempts."""
        delay = 0.5
        give_up = time.monotonic() + self._bound
        problem = "no attempt finished"
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                if self._producer is None:
                    self._producer = KafkaProducer(
                        **client_config(self._settings),
                        enable_idempotence=True,
                        acks="all",
                        max_block_ms=5000,
                        request_timeout_ms=5000,
                    )
                futures = [
                    self._producer.send(
                        self._topic, key=letter.key, value=letter.value, headers=letter.headers(reason)
                    )
                    for letter, reason in items
                ]
                self._producer.flush(timeout=max(1.0, min(10.0, give_up - time.monotonic())))
                if all(f.is_done and f.succeeded() for f in futures):
                    return
                failed = next((f for f in futures if f.is_done and not f.succeeded()), None)
                problem = repr(failed.exception) if failed is not None else "not acknowledged in time"
            except (KafkaError, AssertionError) as exc:  # kafka-python asserts on some bad sends
                problem = f"{type(exc).__name__}: {exc}"
                self._drop_producer()
            if time.monotonic() + delay > give_up:
                raise DeadLetterUnavailable(
                    f"{len(items)} bad events could not be written to {self._topic} within "
                    f"{self._bound:.0f}s ({problem}); stopping with the batch uncommitted"
                )
            log.warning("dead-letter send failed (%s); retrying in %.1fs", problem, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _drop_producer(self) -> None:
        if self._producer is not None:
            abandon(self._producer)
            self._producer = None

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except KafkaError:
                abandon(self._producer)
            self._producer = None


class _Joined(ConsumerRebalanceListener):
    """Tells when the group has given us our share (possibly nothing): only then is "idle" meaningful."""

    def __init__(self) -> None:
        self.joined = False

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.joined = False

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.joined = True


def _connect_consumer(
    settings: Settings,
    topic: str,
    group_id: str,
    batch_max: int,
    stop: threading.Event,
    listener: ConsumerRebalanceListener,
) -> KafkaConsumer:
    delay = 0.5
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            ensure_topic(settings, topic)
            # Made now, not at the first bad event: a broker that will not create it is found at start-up.
            ensure_topic(settings, dead_letter_topic(topic))
            consumer = KafkaConsumer(
                **client_config(settings),
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=6000,
                heartbeat_interval_ms=2000,
                # A long PostgreSQL outage keeps us retrying one batch: stay in the group meanwhile.
                max_poll_interval_ms=15 * 60 * 1000,
                max_poll_records=batch_max,
                fetch_max_wait_ms=100,
                max_partition_fetch_bytes=8 * 1024 * 1024,
            )
            consumer.subscribe([topic], listener=listener)
            return consumer
        except KafkaError as exc:
            log.warning("kafka not reachable (%s); retrying", exc)
            stop.wait(delay)
            delay = min(delay * 2, 5.0)


def _poll_batch(consumer: KafkaConsumer, batch_max: int, linger: float) -> list[ConsumerRecord]:
    """Records holding about `batch_max` events (a record holds one or many), for one transaction."""
    records: list[ConsumerRecord] = []
    events = 0
    timeout_ms = 500
    deadline = None
    while events < batch_max:
        polled = consumer.poll(timeout_ms=timeout_ms, max_records=batch_max - events)
        for recs in polled.values():
            records.extend(recs)
            events += sum(events_in(r.value) if r.value is not None else 1 for r in recs)
        if not polled or not records:
            break
        deadline = deadline or time.monotonic() + linger
        timeout_ms = int((deadline - time.monotonic()) * 1000)
        if timeout_ms <= 0:
            break
    return records


def _offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    top: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        top[tp] = max(top.get(tp, -1), r.offset)
    return {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in top.items()}


def _caught_up(consumer: KafkaConsumer, listener: _Joined) -> bool:
    if not listener.joined:
        return False
    assigned = consumer.assignment()
    if not assigned:
        return True
    ends = consumer.end_offsets(list(assigned))
    return all(consumer.position(tp) >= ends.get(tp, 0) for tp in assigned)


def run_consumer(
    settings: Settings,
    *,
    stop_event: threading.Event | None = None,
    group_id: str | None = None,
    topic: str | None = None,
    batch_max: int = 5000,
    linger: float = 0.05,
    exit_when_idle: float | None = None,
    stats: ConsumerStats | None = None,
) -> ConsumerStats:
    """Consume until `stop_event` is set (or SIGTERM/SIGINT when run in the main thread).

    `exit_when_idle`: return once every assigned partition is consumed to its end and nothing
    arrived for that many seconds: how the quick start lets consumers drain before stopping.
    """
    stop = stop_event or threading.Event()
    stats = stats or ConsumerStats()
    if stop_event is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    name = topic or settings.kafka_topic
    writer = LedgerWriter(settings.database_url, stop, stats)
    dead = _DeadLetters(settings, name, stop)
    try:
        listener = _Joined()
        group = group_id or settings.kafka_consumer_group
        consumer = _connect_consumer(settings, name, group, batch_max, stop, listener)
    except _Stopped:
        return stats
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            records = _poll_batch(consumer, batch_max, linger)
            stats.assigned = set(consumer.assignment())
            if not records:
                if exit_when_idle is not None and time.monotonic() - idle_since >= exit_when_idle:
                    if _caught_up(consumer, listener):
                        break
                continue
            idle_since = time.monotonic()
            _handle(records, consumer, writer, dead, stats)
    except _Stopped:
        log.info("stopping with a batch unwritten; it will be redelivered")
    except DeadLetterUnavailable as exc:
        log.critical("%s", exc)
        raise
    finally:
        consumer.close(autocommit=False)
        writer.close()
        dead.close()
    return stats


def _handle(
    records: Sequence[ConsumerRecord],
    consumer: KafkaConsumer,
    writer: LedgerWriter,
    dead: _DeadLetters,
    stats: ConsumerStats,
) -> None:
    events: list[UsageEvent] = []
    by_id: dict[str, Letter] = {}
    bad: list[tuple[Letter, str]] = []
    received = 0
    for r in records:
        if r.value is None:  # a tombstone: nothing to bill, but say so rather than crash on it
            received += 1
            bad.append((Letter(r.key, b"", r.topic, r.partition, r.offset), "tombstone: record has no value"))
            continue
        for line in split_record(r.value):
            received += 1
            letter = Letter(r.key, line, r.topic, r.partition, r.offset)
            try:
                e = decode(line)
            except BadEvent as exc:
                bad.append((letter, f"BadEvent: {exc}"))
                continue
            events.append(e)
            by_id[e.event_id] = letter
    inserted, refused = writer.write(events)
    bad.extend((by_id[e.event_id], reason) for e, reason in refused)
    if bad:
        first, reason = bad[0]
        log.error("dead-lettering %d events, first at %s/%d/%d: %s", len(bad), first.topic,
                  first.partition, first.offset, reason[:300])  # fmt: skip
        dead.send(bad)
    stats.batches += 1
    stats.received += received
    stats.inserted += inserted
    stats.duplicates += len(events) - len(refused) - inserted
    stats.dead_lettered += len(bad)
    try:
        consumer.commit(_offsets(records))
    except (CommitFailedError, KafkaError) as exc:
        # The group rebalanced under us: the new owner re-reads these, and the ledger skips them.
        stats.commit_failures += 1
        log.warning("offset commit failed (%s); the batch will be redelivered harmlessly", exc)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m usage.consumer`: what `eduaiq consume` runs, usable on its own in tests and benchmarks."""
    parser = argparse.ArgumentParser(description="Kafka -> PostgreSQL usage ledger consumer")
    parser.add_argument("--group", default=None, help="default: EDUAIQ_KAFKA_CONSUMER_GROUP")
    parser.add_argument("--topic", default=None)
    parser.add_argument("--batch-max", type=int, default=5000)
    parser.add_argument("--exit-when-idle", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    try:
        stats = run_consumer(
            load_settings(),
            group_id=args.group,
            topic=args.topic,
            batch_max=args.batch_max,
            exit_when_idle=args.exit_when_idle,
        )
    except DeadLetterUnavailable:
        raise SystemExit(3) from None
    log.info(
        "consumer done: %d received, %d inserted, %d duplicates, %d dead-lettered",
        stats.received,
        stats.inserted,
        stats.duplicates,
        stats.dead_lettered,
    )


if __name__ == "__main__":
    main()
