"""The consumer stores each event once, with rollups that match the ledger, whatever is redelivered."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
from kafka import KafkaConsumer, KafkaProducer

from core.settings import Settings
from tests.usage.helpers import (
    consumer_thread,
    expected_by_unit,
    ledger_count,
    make_event,
    query,
    rollup_totals_by_unit,
    totals_by_unit,
    wait_for,
)
from usage import ledger
from usage.consumer import ConsumerStats, LedgerWriter
from usage.events import encode, kafka_key, pack
from usage.kafka_client import dead_letter_topic, ensure_topic
from usage.producer import UsageProducer


def test_events_reach_the_ledger_once_with_matching_rollups(usage_settings: Settings, unique_id: str) -> None:
    events = [make_event(f"{unique_id}-{i % 3}", i) for i in range(3000)]
    producer = UsageProducer(usage_settings)
    try:
        with consumer_thread(usage_settings, f"g-{unique_id}") as stats:
            for e in events:
                producer.emit(e)
            assert producer.flush(60)
            wait_for(lambda: ledger_count(usage_settings.database_url) >= len(events), 60, "ledger rows")
        assert stats.inserted == len(events)
    finally:
        producer.close()
    url = usage_settings.database_url
    assert ledger_count(url) == len(events)
    expected = expected_by_unit(events)
    assert totals_by_unit(url) == expected
    assert rollup_totals_by_unit(url, "hour") == expected
    assert rollup_totals_by_unit(url, "day") == expected


def test_a_second_group_rereading_the_whole_topic_changes_nothing(
    usage_settings: Settings, unique_id: str
) -> None:
    """Redelivery of every message (a new group starts from the earliest offset) is a no-op, rollups included."""
    events = [make_event(unique_id, i) for i in range(1500)]
    producer = UsageProducer(usage_settings)
    try:
        for e in events:
            producer.emit(e)
        assert producer.flush(60)
    finally:
        producer.close()
    url = usage_settings.database_url
    with consumer_thread(usage_settings, f"first-{unique_id}", exit_when_idle=1.0):
        wait_for(lambda: ledger_count(url) == len(events), 60, "first pass")
    before = (totals_by_unit(url), rollup_totals_by_unit(url, "hour"), rollup_totals_by_unit(url, "day"))
    with consumer_thread(usage_settings, f"second-{unique_id}") as again:
        wait_for(lambda: again.received >= len(events), 60, "second pass to re-read the topic")
    assert again.inserted == 0
    assert again.duplicates == len(events)
    assert (
        totals_by_unit(url),
        rollup_totals_by_unit(url, "hour"),
        rollup_totals_by_unit(url, "day"),
    ) == before
    assert rollup_totals_by_unit(url, "day") == expected_by_unit(events)


def test_concurrent_writers_of_overlapping_batches_count_each_event_once(
    usage_settings: Settings, unique_id: str
) -> None:
    """Two consumers racing on the same events (a rebalance) on real PostgreSQL: one row, one rollup share each."""
    events = [make_event(unique_id, i) for i in range(2000)]
    url = usage_settings.database_url
    barrier = threading.Barrier(4)
    inserted: list[int] = []
    lock = threading.Lock()

    def writer(part: list) -> None:
        conn = psycopg2.connect(url)
        try:
            barrier.wait()
            with conn.cursor() as cur:
                n = ledger.store(cur, part)
            conn.commit()
            with lock:
                inserted.append(n)
        finally:
            conn.close()

    # Four writers, each with an overlapping window of the events, in different orders.
    parts = [events[0:1200], list(reversed(events[800:2000])), events[400:1600], events[::2] + events[1::2]]
    threads = [threading.Thread(target=writer, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(inserted) == len(events)
    assert ledger_count(url) == len(events)
    assert rollup_totals_by_unit(url, "hour") == expected_by_unit(events)
    assert rollup_totals_by_unit(url, "day") == expected_by_unit(events)


def test_rows_keep_every_field_and_record_when_they_were_ingested(
    usage_settings: Settings, unique_id: str
) -> None:
    e = make_event(
        unique_id,
        7,
        extras_paid=[
            {"extra_id": "nsf-123", "unit_id": "u2", "metric": "cost", "amount": 400, "chargeback": "GR-1"}
        ],
        funding={"cost": {"up": {"u2": 600}, "extras": {"nsf-123": 400}}},
        overage_micro=3,
        image_tokens=40,
        cached_tokens=10,
        binding_unit=None,
    )
    url = usage_settings.database_url
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        assert ledger.store(cur, [e]) == 1
        assert ledger.store(cur, [e]) == 0
    conn.commit()
    conn.close()
    row = query(
        url,
        "select request_id, path, funding, extras_paid, overage_micro, image_tokens, cached_tokens, started_at, "
        "ended_at, ingested_at from usage_event where event_id = %s",
        e.event_id,
    )[0]
    assert row[0] == e.request_id
    assert row[1] == e.path
    assert row[2] == e.funding
    assert row[3] == [x.model_dump() for x in e.extras_paid]
    assert (row[4], row[5], row[6]) == (3, 40, 10)
    assert row[7] == e.started_at
    assert row[8] == e.ended_at
    assert row[9] >= row[8]


def _dead_letters(settings: Settings) -> list[Any]:
    reader = KafkaConsumer(
        dead_letter_topic(settings.kafka_topic),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        return list(reader)
    finally:
        reader.close()


def test_messages_that_can_never_be_stored_go_to_the_dead_letter_topic(
    usage_settings: Settings, unique_id: str
) -> None:
    good = [make_event(unique_id, i) for i in range(50)]
    v2 = encode(make_event(unique_id, 999)).replace(b'"schema_version":1', b'"schema_version":2')
    ensure_topic(usage_settings)
    raw = KafkaProducer(bootstrap_servers=usage_settings.kafka_bootstrap, enable_idempotence=True, acks="all")
    for i, e in enumerate(good):
        raw.send(usage_settings.kafka_topic, key=kafka_key(e), value=encode(e))
        if i == 10:
            raw.send(usage_settings.kafka_topic, key=unique_id.encode(), value=b"{not json")
            raw.send(usage_settings.kafka_topic, key=unique_id.encode(), value=v2)
    raw.flush()
    raw.close()
    url = usage_settings.database_url
    with consumer_thread(usage_settings, f"g-{unique_id}") as stats:
        wait_for(lambda: stats.received >= len(good) + 2, 60, "every message handled")
    assert stats.dead_lettered == 2
    assert ledger_count(url) == len(good)
    assert rollup_totals_by_unit(url, "day") == expected_by_unit(good)
    dead = [(r.value, dict(r.headers)["error"].decode()) for r in _dead_letters(usage_settings)]
    assert [value for value, _ in dead] == [b"{not json", v2]
    assert all(reason.startswith("BadEvent") for _, reason in dead)


def test_rows_the_database_refuses_are_isolated_from_the_batch(
    usage_settings: Settings, unique_id: str
) -> None:
    """Validation keeps such events out at the source; a writer must still never let one block the rest."""
    good = [make_event(unique_id, i) for i in range(20)]
    poison = make_event(unique_id, 99).model_copy(update={"input_tokens": 2**40})  # bypasses validation
    writer = LedgerWriter(usage_settings.database_url, threading.Event(), ConsumerStats())
    try:
        inserted, refused = writer.write([*good[:10], poison, *good[10:]])
    finally:
        writer.close()
    assert inserted == len(good)
    assert [e.event_id for e, _ in refused] == [poison.event_id]
    assert "NumericValueOutOfRange" in refused[0][1] or "out of range" in refused[0][1]
    assert rollup_totals_by_unit(usage_settings.database_url, "hour") == expected_by_unit(good)


def test_a_bad_event_inside_a_packed_record_is_dead_lettered_alone(
    usage_settings: Settings, unique_id: str
) -> None:
    """A record holds many events: the good ones of it are stored, the bad line goes to the DLQ by itself."""
    good = [make_event(unique_id, i) for i in range(30)]
    ((key, value),) = pack([(kafka_key(e), encode(e)) for e in good])
    lines = value.split(b"\n")
    value = b"\n".join([*lines[:10], b'{"schema_version": 1, "event_id": "broken"}', *lines[10:]])
    ensure_topic(usage_settings)
    raw = KafkaProducer(bootstrap_servers=usage_settings.kafka_bootstrap, enable_idempotence=True, acks="all")
    raw.send(usage_settings.kafka_topic, key=key, value=value)
    raw.flush()
    raw.close()
    url = usage_settings.database_url
    with consumer_thread(usage_settings, f"g-{unique_id}") as stats:
        wait_for(lambda: stats.received >= len(good) + 1, 60, "every event of the record handled")
    assert (stats.inserted, stats.dead_lettered) == (len(good), 1)
    assert rollup_totals_by_unit(url, "day") == expected_by_unit(good)
    dead = [(r.key, r.value) for r in _dead_letters(usage_settings)]
    assert dead == [(key, b'{"schema_version": 1, "event_id": "broken"}')]
