"""Faults under load: the broker stops, a consumer is SIGKILLed mid-batch, PostgreSQL restarts.

Each test ends with the same proof: the ledger holds exactly the emitted event ids, and the
rollups equal the sums of the events (a double-counted redelivery would show there).
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from cli.services.kafka import start_kafka
from cli.services.postgres import data_dir_for, ensure_database, start_postgres
from cli.services.process import free_port
from core.migrate import upgrade
from core.settings import Settings
from tests.usage.helpers import (
    Load,
    consumer_process,
    consumer_thread,
    expected_by_unit,
    ledger_count,
    ledger_count_or_none,
    make_event,
    query,
    rollup_totals_by_unit,
    settings_for,
    totals_by_unit,
    wait_for,
)
from usage.events import UsageEvent, decode, events_in, split_record
from usage.producer import UsageProducer
from usage.spool import Spool

pytestmark = pytest.mark.slow


def _assert_exactly(url: str, events: list[UsageEvent]) -> None:
    assert ledger_count(url) == len(events)
    assert {r[0] for r in query(url, "select event_id from usage_event")} == {e.event_id for e in events}
    expected = expected_by_unit(events)
    assert totals_by_unit(url) == expected
    assert rollup_totals_by_unit(url, "hour") == expected
    assert rollup_totals_by_unit(url, "day") == expected


def test_broker_stopped_under_load_spools_then_replays_in_order(
    fresh_pg_url: str, tmp_path: Path, unique_id: str
) -> None:
    port = free_port()
    broker = start_kafka(tmp_path / "kafka", port)
    settings = settings_for(fresh_pg_url, f"127.0.0.1:{port}", f"usage-{unique_id}", tmp_path / "state")
    institutions = [f"{unique_id}-{n}" for n in range(4)]
    producer = UsageProducer(settings, retry_interval=0.5, send_timeout=2.0)
    try:
        with consumer_thread(settings, f"g-{unique_id}") as before:
            load = Load(producer, institutions)
            time.sleep(2)
            # tansu keeps messages in memory only: let the consumer drain what it holds before stopping it.
            load.pause()
            assert producer.flush(60)
            before_stop = load.count()
            wait_for(lambda: ledger_count(fresh_pg_url) == before_stop, 60, "drain before the stop")
        # The restarted tansu starts its log, and the group's offsets, from zero (a real broker keeps
        # both). A consumer that lived through the restart would fetch on from its old position and
        # skip the new log's first records whenever the replay had already written past it, so the
        # consumer after the restart is a new one: it finds no committed offset and reads from the start.
        broker.stop()
        load.resume()
        wait_for(lambda: producer.stats().spooled >= 1000, 60, "events to spool while the broker is down")
        assert not producer.stats().direct
        broker = start_kafka(tmp_path / "kafka", port)
        with consumer_thread(settings, f"g-{unique_id}") as after:
            wait_for(lambda: producer.stats().direct, 60, "replay to finish and direct sending to resume")
            time.sleep(1)
            events = load.stop()
            assert producer.flush(60)
            wait_for(lambda: ledger_count(fresh_pg_url) >= len(events), 120, "every event in the ledger")
        assert before.inserted + after.inserted == len(events)
        assert producer.stats().replayed == producer.stats().spooled > 0
        spool = Spool(settings.spool_path)
        assert spool.is_empty()
        spool.close()
        _assert_exactly(fresh_pg_url, events)
        # The restarted broker holds the replayed events and those after them: in emission order per institution.
        order = {e.event_id: i for i, e in enumerate(events)}
        reader = KafkaConsumer(
            settings.kafka_topic,
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=3000,
        )
        per_key: dict[bytes, list[int]] = {}
        for record in reader:
            per_key.setdefault(record.key, []).extend(
                order[decode(line).event_id] for line in split_record(record.value)
            )
        reader.close()
        assert sum(len(v) for v in per_key.values()) >= len(events) - before_stop
        for seqs in per_key.values():
            assert seqs == sorted(seqs)
    finally:
        producer.close()
        broker.stop()


def _writer_in_transaction(url: str) -> bool:
    """A consumer connection is inside a write transaction right now."""
    dbname = url.rsplit("/", 1)[1]
    rows = query(
        url,
        "select count(*) from pg_stat_activity where datname = %s and pid <> pg_backend_pid() "
        "and state in ('active', 'idle in transaction') and xact_start is not null and query ilike 'insert into usage%%'",
        dbname,
    )
    return int(rows[0][0]) > 0


def _committed_events(settings: Settings, group: str) -> int:
    """How many events lie below the group's committed offsets (a record holds one or many)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        offsets = {tp: o.offset for tp, o in admin.list_group_offsets(group)[group].items() if o.offset > 0}
    finally:
        admin.close()
    if not offsets:
        return 0
    reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        reader.assign(list(offsets))
        reader.seek_to_beginning()
        events, pending = 0, set(offsets)
        while pending:
            for tp, records in reader.poll(timeout_ms=1000).items():
                for r in records:
                    if r.offset < offsets[tp]:
                        events += events_in(r.value)
                    if r.offset + 1 >= offsets[tp]:
                        pending.discard(tp)
        return events
    finally:
        reader.close()


def test_consumer_sigkilled_mid_batch_restarts_exactly_once(
    usage_settings: Settings, tmp_path: Path, unique_id: str
) -> None:
    url = usage_settings.database_url
    events = [make_event(f"{unique_id}-{i % 3}", i) for i in range(24_000)]
    producer = UsageProducer(usage_settings)
    for e in events:
        producer.emit(e)
    assert producer.flush(120)
    producer.close()
    group = f"g-{unique_id}"
    windows = []
    for round_ in range(2):
        proc = consumer_process(
            usage_settings, group, tmp_path / f"killed{round_}.log", "--batch-max", "2000"
        )
        try:
            floor = ledger_count(url)
            wait_for(
                lambda floor=floor: ledger_count(url) > floor and _writer_in_transaction(url),
                120,
                "a consumer mid-batch",
                interval=0.02,
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        at_kill = ledger_count(url)
        assert at_kill < len(events), "the consumer finished before it could be killed"
        # Offsets are committed only after the ledger commit: Kafka can never be ahead of the ledger
        # (that would lose the killed batch). Rows ahead of the offsets are redelivered, and skipped.
        committed = _committed_events(usage_settings, group)
        assert committed <= at_kill
        windows.append(at_kill - committed)
    survivor = consumer_process(usage_settings, group, tmp_path / "survivor.log", "--exit-when-idle", "2")
    survivor.wait(240)
    assert survivor.returncode == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    _assert_exactly(url, events)
    duplicates = re.search(r"(\d+) duplicates", (tmp_path / "survivor.log").read_text())
    assert duplicates is not None and int(duplicates.group(1)) == windows[-1]


def test_postgres_restarted_under_load_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str, unique_id: str
) -> None:
    port = free_port()
    state = tmp_path / "pg"
    pg = start_postgres(state, port)
    url = f"postgresql://eduaiq@127.0.0.1:{port}/ledger"
    try:
        ensure_database(url)
        upgrade(url)
        settings = settings_for(url, kafka_bootstrap, f"usage-{unique_id}", tmp_path / "state")
        producer = UsageProducer(settings)
        try:
            with consumer_thread(settings, f"g-{unique_id}") as stats:
                load = Load(producer, [f"{unique_id}-{n}" for n in range(3)])
                wait_for(lambda: (ledger_count_or_none(url) or 0) > 1000, 60, "ledger filling up")
                pg.stop()
                wait_for(lambda: stats.db_retries > 0, 60, "the consumer to notice PostgreSQL is down")
                time.sleep(2)
                pg = start_postgres(state, port)
                time.sleep(2)
                events = load.stop()
                assert producer.flush(60)
                wait_for(lambda: ledger_count(url) >= len(events), 120, "every event in the ledger")
            assert stats.db_retries > 0
            assert producer.stats().spooled == 0
        finally:
            producer.close()
        _assert_exactly(url, events)
    finally:
        pg.stop()
        shutil.rmtree(data_dir_for(state), ignore_errors=True)
