"""`python -m usage.bench --events N`: sustained producer -> Kafka -> ledger throughput and delay.

Producers run in their own processes (each a `UsageProducer`, as a gateway would),
consumers too (`python -m usage.consumer`), so the measurement includes every hop
and no GIL is shared. Delay is measured per event, from its `ended_at` (stamped at
emit time) to the ledger's `ingested_at` (the database clock when the row was
written, a few milliseconds before its transaction commits).

Without --bootstrap / --database-url it starts a private broker and creates a
scratch database (on the local PostgreSQL at 5432, else an embedded one), and
removes them afterwards. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2

from core.settings import Settings


def _event(institution: str, seq: int, now: datetime) -> Any:
    from usage.events import UsageEvent

    unit = f"unit{seq % 40}"
    return UsageEvent(
        request_id=f"bench-{seq}",
        institution_id=institution,
        started_at=now - timedelta(milliseconds=250),
        ended_at=now,
        user_id=f"user{seq % 500}",
        key_id=f"key{seq % 500}",
        unit_id=unit,
        path=[unit, f"dept{seq % 8}", institution],
        purpose="teaching",
        provider_id="campus-vllm",
        deployment_id="gpu01",
        model_id=f"model{seq % 4}",
        input_tokens=200 + seq % 300,
        output_tokens=50 + seq % 200,
        cost_micro=500 + seq % 2000,
        latency_ms=250,
        status="ok",
    )


def _produce(settings_json: str, worker: int, count: int, rate: float, spool: str, start_at: float) -> None:
    """One producer process: emit `count` events at `rate` per second (0: as fast as it can)."""
    from usage.producer import UsageProducer

    settings = Settings.model_validate_json(settings_json)
    producer = UsageProducer(settings, spool_dir=Path(spool))
    institutions = [f"bench-inst{n}" for n in range(12)]
    while time.time() < start_at:
        time.sleep(0.01)
    began = time.monotonic()
    for i in range(count):
        if rate > 0:
            due = began + i / rate
            ahead = due - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        seq = worker + i * 1000
        producer.emit(_event(institutions[seq % len(institutions)], seq, datetime.now(UTC)))
    producer.flush(600)
    producer.close()


@contextmanager
def _broker(work: Path) -> Iterator[str]:
    from cli.services.kafka import start_kafka
    from cli.services.process import free_port

    port = free_port()
    child = start_kafka(work / "kafka", port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        child.stop()


@contextmanager
def _database(work: Path) -> Iterator[str]:
    from cli.services.postgres import SUPERUSER, data_dir_for, ensure_database, start_postgres
    from cli.services.process import free_port, port_open
    from core.migrate import upgrade

    name = f"eduaiq_bench_{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        if port_open("127.0.0.1", 5432):
            server = "postgresql://postgres@127.0.0.1:5432"
        else:
            port = free_port()
            child = start_postgres(work / "pg", port)
            stack.callback(shutil.rmtree, data_dir_for(work / "pg"), True)
            stack.callback(child.stop)
            server = f"postgresql://{SUPERUSER}@127.0.0.1:{port}"
        url = f"{server}/{name}"
        ensure_database(url)
        upgrade(url)
        try:
            yield url
        finally:
            conn = psycopg2.connect(f"{server}/postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'drop database if exists "{name}" with (force)')
            conn.close()


def _count(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("select count(*) from usage_event")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _measure(url: str) -> dict[str, float]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "select min(ended_at), max(ended_at), min(ingested_at), max(ingested_at), "
                "percentile_cont(0.5) within group (order by extract(epoch from ingested_at - ended_at)), "
                "percentile_cont(0.99) within group (order by extract(epoch from ingested_at - ended_at)), "
                "max(extract(epoch from ingested_at - ended_at)) from usage_event"
            )
            first, last_emit, first_in, last_in, p50, p99, worst = cur.fetchone()
    finally:
        conn.close()
    return {
        "emit_seconds": (last_emit - first).total_seconds(),
        "end_to_end_seconds": (last_in - first).total_seconds(),
        "ingest_seconds": (last_in - first_in).total_seconds(),
        "delay_p50_s": float(p50),
        "delay_p99_s": float(p99),
        "delay_max_s": float(worst),
    }


def run(
    events: int, producers: int, consumers: int, rate: float, bootstrap: str | None, database_url: str | None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="eduaiq-bench-"))
    try:
        with ExitStack() as stack:
            bootstrap = bootstrap or stack.enter_context(_broker(work))
            url = database_url or stack.enter_context(_database(work))
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            settings = Settings(
                database_url=url, kafka_bootstrap=bootstrap, kafka_topic=topic, state_dir=work
            )
            from usage.kafka_client import ensure_topic

            ensure_topic(settings)
            before = _count(url)
            env = {
                **os.environ,
                "EDUAIQ_DATABASE_URL": url,
                "EDUAIQ_KAFKA_BOOTSTRAP": bootstrap,
                "EDUAIQ_KAFKA_TOPIC": topic,
            }
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "usage.consumer", "--group", f"{topic}-g"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=(work / f"consumer{n}.log").open("wb"),
                )
                for n in range(consumers)
            ]
            stack.callback(_stop_all, procs)
            time.sleep(4)  # group join (about half the 6 s session timeout) before the clock starts
            ctx = multiprocessing.get_context("spawn")
            start_at = time.time() + 2
            share = [events // producers + (1 if n < events % producers else 0) for n in range(producers)]
            workers = [
                ctx.Process(
                    target=_produce,
                    args=(
                        settings.model_dump_json(),
                        n,
                        share[n],
                        rate / producers,
                        str(work / f"spool{n}"),
                        start_at,
                    ),
                )
                for n in range(producers)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            deadline = time.monotonic() + 600
            while _count(url) - before < events:
                if time.monotonic() > deadline:
                    raise TimeoutError("the ledger did not receive every event within 10 minutes")
                time.sleep(0.5)
            m = _measure(url)
            return {
                "events": events,
                "producers": producers,
                "consumers": consumers,
                "target_rate": rate or None,
                # Rows per second while the ledger was being written, and over the whole run (first event
                # ended -> last row written, so it includes the final delay).
                "ledger_rate_events_per_s": round(events / max(m["ingest_seconds"], 1e-9), 1),
                "throughput_events_per_s": round(events / m["end_to_end_seconds"], 1),
                "emit_rate_events_per_s": round(events / max(m["emit_seconds"], 1e-9), 1),
                "delay_p50_s": round(m["delay_p50_s"], 3),
                "delay_p99_s": round(m["delay_p99_s"], 3),
                "delay_max_s": round(m["delay_max_s"], 3),
                "cpus": os.cpu_count(),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument(
        "--rate", type=float, default=0, help="total events/s to offer (0: as fast as possible)"
    )
    parser.add_argument("--bootstrap", default=None, help="an existing broker (default: start a private one)")
    parser.add_argument(
        "--database-url", default=None, help="an existing migrated database (default: scratch)"
    )
    args = parser.parse_args(argv)
    result = run(args.events, args.producers, args.consumers, args.rate, args.bootstrap, args.database_url)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
