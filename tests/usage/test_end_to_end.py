"""100,000 events from two producers through Kafka to the ledger, exactly once, with two consumer processes."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from core.settings import Settings
from tests.usage.helpers import (
    consumer_process,
    expected_by_unit,
    ledger_count,
    make_event,
    query,
    rollup_totals_by_unit,
    totals_by_unit,
    wait_for,
)
from usage.events import UsageEvent
from usage.producer import UsageProducer

TOTAL = 100_000


@pytest.mark.slow
def test_hundred_thousand_events_from_two_producers_land_exactly_once(
    usage_settings: Settings, tmp_path: Path, unique_id: str
) -> None:
    institutions = [f"{unique_id}-{n}" for n in range(5)]
    halves: list[list[UsageEvent]] = [
        [make_event(institutions[i % 5], i) for i in range(start, TOTAL, 2)] for start in (0, 1)
    ]
    url = usage_settings.database_url
    group = f"g-{unique_id}"
    consumers = [consumer_process(usage_settings, group, tmp_path / f"consumer{n}.log") for n in range(2)]
    try:
        producers = [UsageProducer(usage_settings, spool_dir=tmp_path / f"spool{n}") for n in range(2)]

        def publish(producer: UsageProducer, events: list[UsageEvent]) -> None:
            for e in events:
                producer.emit(e)
            assert producer.flush(120)

        threads = [
            threading.Thread(target=publish, args=pair) for pair in zip(producers, halves, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        for p in producers:
            assert p.stats().spooled == 0
            p.close()
        wait_for(lambda: ledger_count(url) >= TOTAL, 240, "all events in the ledger", interval=1.0)
    finally:
        for c in consumers:
            c.send_signal(signal.SIGTERM)
        for c in consumers:
            c.wait(60)
    logs = [(tmp_path / f"consumer{n}.log").read_text() for n in range(2)]
    assert all("consumer done" in log for log in logs), logs

    everything = halves[0] + halves[1]
    assert ledger_count(url) == TOTAL
    ids = {r[0] for r in query(url, "select event_id from usage_event")}
    assert ids == {e.event_id for e in everything}
    expected = expected_by_unit(everything)
    assert totals_by_unit(url) == expected
    assert rollup_totals_by_unit(url, "hour") == expected
    assert rollup_totals_by_unit(url, "day") == expected
