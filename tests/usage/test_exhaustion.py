"""Exhausted resources never lose events silently, and never let the gateway serve unmetered (issue 16 item 10).

Real processes throughout: a spool at its cap (EDUAIQ_SPOOL_MAX_BYTES) and a spool on a full tmpfs while the
broker is away, a usage sidecar that cannot start. Each checks the bound (memory, disk), the refusal (503 in
the OpenAI shape with Retry-After, /readyz not ready, the metric) and, once the resource is back, that every
event accepted reached Kafka or the ledger exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.services.kafka import start_kafka
from cli.services.process import free_port
from core.settings import Settings
from tests.gateway.harness import gateway_stack, metric_samples
from tests.usage.helpers import (
    consumer_thread,
    ledger_count,
    make_event,
    query,
    read_topic,
    settings_for,
    wait_for,
)
from usage.events import encode, kafka_key
from usage.producer import UsageProducer
from usage.sidecar import ProducerSidecar

pytestmark = pytest.mark.slow

CAP = 64 * 1024  # the smallest spool, queue and buffer caps the settings allow


def test_a_spool_at_its_cap_blocks_the_producer_with_bounded_memory_and_loses_nothing(
    fresh_pg_url: str, tmp_path: Path, unique_id: str
) -> None:
    """Broker away, spool full: the producer used to retry the spool write for ever while its queue grew
    without bound. Now the emitter waits (memory bounded), `blocked` says so, and when the broker is back
    every event reaches the ledger once."""
    port = free_port()
    settings = settings_for(fresh_pg_url, f"127.0.0.1:{port}", f"usage-{unique_id}", tmp_path / "state")
    settings = settings.model_copy(update={"spool_max_bytes": CAP, "usage_queue_max_bytes": CAP})
    events = [make_event(unique_id, i) for i in range(3000)]
    largest = max(len(encode(e)) + len(kafka_key(e)) for e in events)
    producer = UsageProducer(settings, retry_interval=0.2, send_timeout=2.0)
    emitted: list[int] = []

    def emit_all() -> None:
        for e in events:
            producer.emit(e)
            emitted.append(1)

    emitter = threading.Thread(target=emit_all, daemon=True)
    emitter.start()
    broker = None
    try:
        wait_for(
            lambda: getattr(producer.stats(), "blocked", False), 90, "the producer to report it is blocked"
        )
        stats = producer.stats()
        assert stats.spool_bytes <= CAP
        assert stats.queued_bytes <= CAP + largest
        assert emitter.is_alive() and len(emitted) < len(events), "the emitter must wait for room"
        broker = start_kafka(tmp_path / "kafka", port)
        with consumer_thread(settings, f"g-{unique_id}"):
            emitter.join(180)
            assert not emitter.is_alive()
            assert producer.flush(180)
            wait_for(lambda: ledger_count(fresh_pg_url) >= len(events), 180, "every event in the ledger")
        assert not producer.stats().blocked
    finally:
        producer.close()
        if broker is not None:
            broker.stop()
    assert ledger_count(fresh_pg_url) == len(events)
    assert {r[0] for r in query(fresh_pg_url, "select event_id from usage_event")} == {
        e.event_id for e in events
    }


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _priced(doc: dict[str, Any]) -> None:
    """One micro-unit per output token and a cap far above what the test spends: no 429 gets in the way."""
    doc["providers"][0]["models"][0]["price"] = {"input_per_mtok": 0, "output_per_mtok": 1}
    cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
    cs101["budget"] = {"cost": {"fixed": 100}}
    del cs101["member_cap"]


async def _burst(base: str, key: str, n: int, tag: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=16)) as client:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> httpx.Response:
            async with sem:
                return await client.post(
                    base + "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "model": "demo-chat",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"{tag}{i}"}],
                    },
                )

        return await asyncio.gather(*[one(i) for i in range(n)])


def test_a_gateway_whose_spool_disk_is_full_while_kafka_is_away_refuses_503_and_bills_every_served_request(
    pg_server_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    broker = start_kafka(tmp_path / "kafka", port)
    spool = tmp_path / "spool0"  # the harness points gateway 0's EDUAIQ_SPOOL_DIR here
    with _tmpfs(spool, "1m"):
        try:
            with gateway_stack(pg_server_url, redis_url, f"127.0.0.1:{port}", tmp_path, mutate=_priced,
                               consumer=True) as stack:  # fmt: skip
                key = stack.key("alice")
                broker.stop()  # nothing was sent yet: the in-memory broker loses nothing
                # A nearly full disk: what is left takes a few hundred events.
                with (spool / "filler").open("wb") as f:
                    with contextlib.suppress(OSError):
                        f.write(b"\0" * (1024 * 1024 - 160 * 1024))
                served = 0
                refused: list[httpx.Response] = []
                for round_ in range(20):
                    answers = asyncio.run(_burst(stack.base_url, key, 200, f"r{round_}-"))
                    served += sum(r.status_code == 200 for r in answers)
                    refused = [r for r in answers if r.status_code == 503]
                    assert all(r.status_code in (200, 503) for r in answers), [r.text for r in answers][:3]
                    if refused:
                        break
                assert refused, f"{served} requests served with Kafka away and the spool's disk full"
                body = refused[0].json()
                assert set(body["error"]) == {"message", "type", "param", "code"}
                assert body["error"]["code"] == "usage_pipeline_unavailable"
                assert int(refused[0].headers["retry-after"]) > 0
                ready = httpx.get(stack.base_url + "/readyz", timeout=30)
                assert ready.status_code == 503
                assert ready.json()["checks"]["broker"].startswith("refusing")
                assert metric_samples(stack.base_url)[("eduaiq_usage_refusing", ())] == 1
                # Still refused while nothing changed: the gate holds, requests do not trickle through.
                again = asyncio.run(_burst(stack.base_url, key, 20, "again-"))
                assert {r.status_code for r in again} == {503}

                broker = start_kafka(tmp_path / "kafka", port)  # the broker is back: the spool drains
                wait_for(lambda: httpx.get(stack.base_url + "/readyz", timeout=30).status_code == 200, 180,
                         "the gateway to be ready again")  # fmt: skip
                after = asyncio.run(_burst(stack.base_url, key, 20, "after-"))
                assert {r.status_code for r in after} == {200}
                served += len(after)

                def billed() -> int:
                    rows = query(stack.db_url, "select count(distinct request_id) from usage_event "
                                 "where institution_id = %s and status = 'ok'", stack.institution)  # fmt: skip
                    return int(rows[0][0])

                wait_for(lambda: billed() >= served, 240, "every served request in the ledger")
                assert billed() == served
        finally:
            broker.stop()


async def test_a_sidecar_that_cannot_start_backs_off_and_the_gateway_refuses_once_its_buffer_is_full(
    usage_settings: Settings, tmp_path: Path, unique_id: str
) -> None:
    """The spool directory cannot be created (a file is in the way): every sidecar dies at start. Restarts
    back off exponentially instead of every 0.2 s; lines wait in the pipe and then in the gateway's
    bounded buffer; once that is full the gateway stops admitting. When the cause is removed every line
    accepted so far reaches the broker once, in order."""
    blocker = tmp_path / "in-the-way"
    blocker.write_text("not a directory")
    settings = usage_settings.model_copy(
        update={"spool_dir": blocker / "spool", "usage_buffer_max_bytes": CAP}
    )
    sidecar = ProducerSidecar(settings)
    await sidecar.start()
    try:
        for _ in range(600):
            if sidecar.restarts >= 4:
                break
            await asyncio.sleep(0.1)
        assert sidecar.restarts >= 4
        assert sidecar.respawn_delay >= 0.2 * 2**3  # 0.2, 0.4, 0.8, 1.6, ...: not 0.2 every time
        assert "restarting" in sidecar.state()
        n = 0
        while sidecar.admitting and n < 20_000:
            event = make_event(unique_id, n)
            sidecar.emit_line(kafka_key(event), encode(event))
            n += 1
            if n % 100 == 0:
                await asyncio.sleep(0.01)  # the lines reach the pipe; then the buffer holds the rest
        assert not sidecar.admitting, "20,000 events buffered for a sidecar that cannot start"
        assert sidecar.held_bytes() >= CAP
        assert sidecar.state().startswith("refusing")
        blocker.unlink()  # the cause is fixed: the next restart works
        assert await sidecar.flush(180)
        assert sidecar.admitting and sidecar.held_bytes() == 0
    finally:
        await sidecar.close()
    got = read_topic(settings, n)
    assert sorted(seq for _, seq in got) == list(range(n))
    assert [seq for _, seq in got] == list(range(n))  # one institution: one partition, in order
