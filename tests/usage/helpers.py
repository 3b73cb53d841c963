"""Shared helpers for the usage tests: event factory, a consumer in a thread, ledger queries."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
from kafka import KafkaConsumer

from core.settings import Settings
from usage.consumer import ConsumerStats, run_consumer
from usage.events import UsageEvent, decode, split_record


def make_event(institution_id: str, seq: int = 0, **overrides: Any) -> UsageEvent:
    """A plausible settled request; `seq` varies user, model and size so sums are not trivial."""
    ended = overrides.pop("ended_at", datetime.now(UTC))
    unit = overrides.pop("unit_id", f"u{seq % 5}")
    fields: dict[str, Any] = {
        "request_id": f"req-{seq}",
        "institution_id": institution_id,
        "started_at": ended - timedelta(milliseconds=300 + seq % 200),
        "ended_at": ended,
        "user_id": f"user{seq % 17}",
        "key_id": f"k{seq % 17}",
        "unit_id": unit,
        "path": [unit, "dept", institution_id],
        "purpose": "teaching",
        "provider_id": "campus-vllm",
        "deployment_id": "gpu01",
        "model_id": f"model{seq % 3}",
        "input_tokens": 100 + seq % 50,
        "output_tokens": 20 + seq % 30,
        "cost_micro": 1000 + seq % 977,
        "latency_ms": 300 + seq % 200,
        "status": "ok",
    }
    fields.update(overrides)
    return UsageEvent(**fields)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def consumer_thread(settings: Settings, group_id: str, **kwargs: Any) -> Iterator[ConsumerStats]:
    stop = threading.Event()
    stats = ConsumerStats()
    thread = threading.Thread(
        target=run_consumer,
        args=(settings,),
        kwargs={"stop_event": stop, "group_id": group_id, "stats": stats, **kwargs},
        daemon=True,
    )
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "consumer did not stop"


def consumer_process(settings: Settings, group_id: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A consumer in its own process (`python -m usage.consumer`), configured only by environment."""
    env = {
        **os.environ,
        "EDUAIQ_DATABASE_URL": settings.database_url,
        "EDUAIQ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "EDUAIQ_KAFKA_TOPIC": settings.kafka_topic,
    }
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "usage.consumer", "--group", group_id, *extra],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def ledger_count(url: str, institution_id: str | None = None) -> int:
    if institution_id is None:
        return int(query(url, "select count(*) from usage_event")[0][0])
    return int(query(url, "select count(*) from usage_event where institution_id = %s", institution_id)[0][0])


def ledger_count_or_none(url: str) -> int | None:
    """None while the database is unreachable (the fault tests stop it)."""
    try:
        return ledger_count(url)
    except psycopg2.OperationalError:
        return None


def totals_by_unit(url: str) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """(institution, unit) -> (requests, input, output, cost) from the ledger."""
    rows = query(
        url,
        "select institution_id, unit_id, count(*), sum(input_tokens), sum(output_tokens), sum(cost_micro) "
        "from usage_event group by 1, 2",
    )
    return {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows}


def rollup_totals_by_unit(url: str, grain: str) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    rows = query(
        url,
        "select institution_id, unit_id, sum(requests), sum(input_tokens), sum(output_tokens), sum(cost_micro) "
        "from usage_rollup where grain = %s group by 1, 2",
        grain,
    )
    return {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows}


def expected_by_unit(events: list[UsageEvent]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for e in events:
        acc = out.setdefault((e.institution_id, e.unit_id or ""), [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += e.input_tokens
        acc[2] += e.output_tokens
        acc[3] += e.cost_micro
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


def settings_for(database_url: str, bootstrap: str, topic: str, state_dir: Path) -> Settings:
    return Settings(
        database_url=database_url, kafka_bootstrap=bootstrap, kafka_topic=topic, state_dir=state_dir
    )


class Load:
    """Emits events continuously from a thread (the gateway under load), remembering each one."""

    def __init__(self, producer: Any, institutions: list[str], per_second: int = 2000) -> None:
        self.events: list[UsageEvent] = []
        self._producer = producer
        self._institutions = institutions
        self._interval = 0.01
        self._per_tick = max(1, per_second // 100)
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            if not self._running.wait(0.05):
                continue
            with self._lock:
                for _ in range(self._per_tick):
                    e = make_event(self._institutions[seq % len(self._institutions)], seq)
                    self._producer.emit(e)
                    self.events.append(e)
                    seq += 1
            time.sleep(self._interval)

    def pause(self) -> None:
        """Returns once no emit is in progress."""
        self._running.clear()
        with self._lock:
            pass

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> list[UsageEvent]:
        self._stop.set()
        self._thread.join(30)
        return self.events

    def count(self) -> int:
        return len(self.events)


def create_org(
    url: str,
    institution_id: str,
    units: list[tuple[str, str | None, str, str | None]],
    *,
    tz: str,
    currency: str = "USD",
) -> None:
    """An institution and its units (id, parent, kind, name), parents first, through the schema models."""
    from sqlmodel import Session

    from core.db import make_sync_engine
    from core.models.org import Institution, Unit

    engine = make_sync_engine(url)
    try:
        with Session(engine) as session:
            session.add(
                Institution(
                    id=institution_id,
                    name=f"{institution_id.title()} University",
                    currency=currency,
                    timezone=tz,
                )
            )
            session.flush()
            for position, (unit_id, parent, kind, name) in enumerate(units):
                session.add(
                    Unit(
                        institution_id=institution_id,
                        id=unit_id,
                        parent_id=parent,
                        kind=kind,
                        name=name,
                        position=position,
                    )
                )
                session.flush()
            session.commit()
    finally:
        engine.dispose()


def store_events(url: str, events: list[UsageEvent]) -> int:
    from usage import ledger

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            n = ledger.store(cur, events)
        conn.commit()
        return n
    finally:
        conn.close()


def execute(url: str, sql: str, *params: Any) -> int:
    """Run a statement and commit; returns the affected row count."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return int(cur.rowcount)
    finally:
        conn.close()


def read_topic(settings: Settings, expected: int, wait_ms: int = 5000) -> list[tuple[bytes, int]]:
    """Every event of the topic, as (key, request sequence), in partition order."""
    consumer = KafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=wait_ms,
    )
    out: list[tuple[bytes, int]] = []
    for record in consumer:
        for line in split_record(record.value):
            out.append((record.key, int(decode(line).request_id.split("-")[1])))
        if len(out) >= expected:
            break
    consumer.close()
    return out
