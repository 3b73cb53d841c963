"""The producer never loses an event: unreachable broker -> spool, spool survives a restart, replay in order."""

from __future__ import annotations

from pathlib import Path

from cli.services.process import free_port
from core.settings import Settings
from tests.usage.helpers import (
    consumer_thread,
    ledger_count,
    make_event,
    query,
    read_topic,
    settings_for,
    wait_for,
)
from usage.events import encode, events_in, kafka_key
from usage.producer import UsageProducer
from usage.spool import Spool


def test_unreachable_broker_spools_and_a_restarted_producer_replays_in_order(
    usage_settings: Settings, tmp_path: Path, unique_id: str
) -> None:
    spool_dir = tmp_path / "spool"
    dead = settings_for(
        usage_settings.database_url, f"127.0.0.1:{free_port()}", usage_settings.kafka_topic, tmp_path
    )
    institutions = [f"{unique_id}-{n}" for n in range(4)]
    events = [make_event(institutions[i % 4], i) for i in range(800)]

    gateway = UsageProducer(dead, spool_dir=spool_dir, retry_interval=0.5)
    for e in events[:500]:
        gateway.emit(e)
    assert gateway.flush(60)
    assert gateway.stats().spooled == 500
    assert not gateway.stats().direct
    for e in events[500:]:
        gateway.emit(e)
    gateway.close()  # the gateway stops with the broker still away: the rest is spooled too

    on_disk = Spool(spool_dir)
    assert sum(events_in(payload) for _, _, payload in on_disk.peek(len(events))) == len(events)
    on_disk.close()

    restarted = UsageProducer(usage_settings, spool_dir=spool_dir)
    try:
        wait_for(lambda: restarted.stats().replayed == len(events), 60, "replay of the spool")
        wait_for(lambda: restarted.stats().direct, 30, "direct mode after the replay")
        assert restarted.stats().sent == 0
    finally:
        restarted.close()
    on_disk = Spool(spool_dir)
    assert on_disk.is_empty()
    on_disk.close()

    # In order per institution, as emitted.
    seen = read_topic(usage_settings, len(events))
    for inst in institutions:
        mine = [seq for key, seq in seen if key == inst.encode()]
        assert mine == [i for i, e in enumerate(events) if e.institution_id == inst]

    url = usage_settings.database_url
    with consumer_thread(usage_settings, f"g-{unique_id}"):
        wait_for(lambda: ledger_count(url) >= len(events), 60, "ledger rows")
    got = {r[0] for r in query(url, "select event_id from usage_event")}
    assert got == {e.event_id for e in events}


def test_new_events_wait_behind_spooled_ones(
    usage_settings: Settings, tmp_path: Path, unique_id: str
) -> None:
    """Events emitted while old ones are being replayed go out after them, never before."""
    spool_dir = tmp_path / "spool"
    old = [make_event(unique_id, i) for i in range(3000)]
    new = [make_event(unique_id, i) for i in range(3000, 4000)]
    spool = Spool(spool_dir)
    spool.append([(kafka_key(e), encode(e)) for e in old])
    spool.close()
    producer = UsageProducer(usage_settings, spool_dir=spool_dir, batch_max=200)
    try:
        for e in new:
            producer.emit(e)
        wait_for(lambda: producer.stats().replayed + producer.stats().sent >= 4000, 60, "all sent")
    finally:
        producer.close()
    seen = [seq for _, seq in read_topic(usage_settings, 4000)]
    assert seen == list(range(4000))
