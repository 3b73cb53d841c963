"""Publishing usage events off the request path, with a durable spool when the broker is away.

The gateway calls `emit(event)` (or `emit_line` with the event already encoded), which
only puts it on an in-memory queue.
One background thread owns the Kafka producer (idempotent, acks=all, keyed by
institution), packs what accumulated in the last few milliseconds into one record
per institution (see `usage.events.pack`) and works in one of two modes:

- direct: take a batch from the queue, send it, wait for the acknowledgements;
  whatever was not acknowledged is appended to the spool, in order, and the
  producer switches to spooling.
- spooling: while the broker is away every batch goes to the spool. Once it is
  back, the spool is replayed oldest first (rows deleted only once acknowledged)
  while newer events wait in memory behind it (spooled too if more than
  `hold_max` pile up); when the spool is empty it goes direct. No event ever
  overtakes an older one.

Memory and disk are bounded. Events waiting for the sender take at most
`EDUAIQ_USAGE_QUEUE_MAX_BYTES`: past it `emit` waits (the sidecar then stops
reading its pipe, and the gateway stops admitting requests once its own buffer
is full). The spool refuses past `EDUAIQ_SPOOL_MAX_BYTES`, as a full disk does;
the batch it refused is kept and retried, never dropped, and `stats().blocked`
says the broker and the spool are both unavailable (the gateway then answers
503 and its /readyz turns not-ready).

A message can reach Kafka twice (acknowledged, but the ack was lost, then
replayed); the ledger's unique event id makes that harmless. What is lost on a
hard crash (SIGKILL) is only what sat in the in-memory queue: normally a few
milliseconds of events, at most `hold_max` while catching up after an outage. A
clean shutdown (`close`) sends or spools everything.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from core.settings import Settings
from usage.events import UsageEvent, encode, events_in, kafka_key, pack
from usage.kafka_client import abandon, client_config, ensure_topic
from usage.spool import Spool

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes]
Line = tuple[bytes, bytes]  # (Kafka key, one encoded event)

# Replay this long before looking at the queue again: long enough to move thousands of rows per turn.
_REPLAY_BURST_SECONDS = 0.5
# Spool rows per send: each is a packed record of up to RECORD_MAX_BYTES, so this bounds memory too.
_REPLAY_RECORDS = 64


@dataclass(frozen=True)
class ProducerStats:
    emitted: int
    sent: int
    spooled: int
    replayed: int
    pending: int
    direct: bool
    # Neither the broker nor the spool takes events: the gateway must stop admitting billable requests.
    blocked: bool = False
    queued_bytes: int = 0
    spool_bytes: int = 0


class UsageProducer:
    """Owns one background sender thread; make one per process and share it."""

    def __init__(
        self,
        settings: Settings,
        *,
        spool_dir: Path | None = None,
        topic: str | None = None,
        batch_max: int = 2000,
        send_timeout: float = 5.0,
        retry_interval: float = 1.0,
        connect_timeout: float = 2.0,
        linger: float = 0.05,
        hold_max: int = 20_000,
        queue_max_bytes: int | None = None,
    ) -> None:
        """`linger`: how long the sender gathers events before one send. Each send costs kafka-python's
        I/O thread about a millisecond of CPU whatever its size, so at 4,000 events/s a 20 ms linger
        cost ~25 µs of CPU an event and 50 ms ~13 (`usage.bench` and a loaded gateway's sidecar, measured
        on the build machine); events reach the broker at most that much later."""
        self._settings = settings
        self._topic = topic or settings.kafka_topic
        self._batch_max = batch_max
        self._linger = linger
        self._hold_max = hold_max
        self._send_timeout = send_timeout
        self._retry_interval = retry_interval
        self._connect_timeout_ms = int(connect_timeout * 1000)
        self._spool = Spool(spool_dir or settings.spool_path, settings.spool_max_bytes)
        self._queue_max_bytes = queue_max_bytes or settings.usage_queue_max_bytes
        self._queued_bytes = 0
        self._spool_error: str | None = None
        self._spool_bytes = self._spool.used_bytes()
        # Events travel in lists: the sidecar hands over what it read from its pipe at once, one put
        # (and one wake-up of this thread) per read rather than per event.
        self._queue: queue.SimpleQueue[list[Line]] = queue.SimpleQueue()
        self._producer: KafkaProducer | None = None
        self._carry: list[Line] = []
        self._direct = False
        self._next_attempt = 0.0
        self._stopping = threading.Event()
        self._closed = False
        self._cond = threading.Condition()
        self._emitted = 0
        self._handled = 0
        self._sent = 0
        self._spooled = 0
        self._replayed = 0
        self._thread = threading.Thread(target=self._run, name="usage-producer", daemon=True)
        self._thread.start()

    # -- the request path -------------------------------------------------------------------------

    def emit(self, event: UsageEvent) -> None:
        """Never blocks on the network: the event is queued for the sender thread."""
        self.emit_line(kafka_key(event), encode(event))

    def emit_line(self, key: bytes, line: bytes) -> None:
        """An event its caller encoded (one JSON object, as `usage.events.encode` writes it)."""
        self.emit_lines([(key, line)])

    def emit_lines(self, lines: list[Line]) -> None:
        """Events their caller encoded, in order; the list becomes the producer's."""
        if self._closed:
            raise RuntimeError("usage producer is closed")
        size = sum(len(k) + len(v) for k, v in lines)
        with self._cond:
            # Past the bound the caller waits for room: memory stays bounded and nothing is dropped.
            self._cond.wait_for(lambda: self._queued_bytes < self._queue_max_bytes or self._closed)
            if self._closed:
                raise RuntimeError("usage producer is closed")
            self._emitted += len(lines)
            self._queued_bytes += size
        self._queue.put(lines)

    # -- control ----------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is acknowledged by the broker or safely spooled."""
        with self._cond:
            target = self._emitted
            return self._cond.wait_for(lambda: self._handled >= target, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Send or spool everything pending, then stop. Called before consumers are asked to drain."""
        self._closed = True
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()  # an emitter waiting for room gives up: emit after close raises
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "usage producer did not stop within %.0fs; %d events still queued",
                timeout,
                self._queued(),
            )
            return
        self._spool.close()

    def stats(self) -> ProducerStats:
        with self._cond:
            return ProducerStats(
                emitted=self._emitted,
                sent=self._sent,
                spooled=self._spooled,
                replayed=self._replayed,
                pending=self._emitted - self._handled,
                direct=self._direct,
                blocked=self._blocked(),
                queued_bytes=self._queued_bytes,
                spool_bytes=self._spool_bytes,
            )

    def _blocked(self) -> bool:
        return not self._direct and self._spool_error is not None

    # -- the sender thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    break
            except Exception:
                # The thread must outlive any surprise: a dead sender would silently drop every later event.
                # (A failing spool is logged where it fails.) Not the stop event's wait: once stopping it
                # returns at once, and a spool that keeps failing would spin this loop.
                if self._spool_error is None:
                    log.exception("usage producer step failed; going on")
                time.sleep(self._retry_interval)
        if self._producer is not None:
            try:
                self._producer.close(timeout=self._send_timeout)
            except KafkaError:
                abandon(self._producer)
            self._producer = None

    def _step(self) -> bool:
        """One turn of the sender loop; False once stopping with nothing left to hand over."""
        stopping = self._stopping.is_set()
        if not stopping and time.monotonic() >= self._next_attempt:
            self._replay_round()
        catching_up = not stopping and not self._direct and self._producer is not None
        room = self._queued() < self._hold_max and self._queued_bytes < self._queue_max_bytes // 2
        if not self._carry and catching_up and room:
            # The broker is back and the spool is draining: newer events wait in memory behind it
            # (written to disk only if too many pile up), so replay is not slowed by re-spooling them.
            if self._next_attempt > time.monotonic():
                self._stopping.wait(0.05)  # another process holds the replay lock
            return True
        # A batch that failed half-way (a spool write error) is kept and retried, never dropped.
        if not self._carry:
            limit = self._batch_max if self._direct else 10 * self._batch_max
            self._carry = self._take(0.0 if stopping else 0.05, limit)
        if not self._carry:
            return not stopping
        batch = self._carry
        if self._direct:
            self._send_direct(batch)
        else:
            self._to_spool(pack(batch))
        self._carry = []
        with self._cond:
            self._handled += len(batch)
            self._cond.notify_all()
        return True

    def _queued(self) -> int:
        """Events emitted and not yet taken by the sender loop (nor in its carried batch)."""
        return self._emitted - self._handled - len(self._carry)

    def _take(self, wait: float, limit: int) -> list[Line]:
        """About `limit` events (whole lists as emitted, so one more list may overshoot): the first
        list, then whatever arrives while we linger. Sleeping and then draining costs the request
        path far less than waking for every event, and one record per institution per batch is far
        cheaper to send than one per event."""
        try:
            batch = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return []
        if not self._stopping.is_set() and self._linger > 0:
            time.sleep(self._linger)
        get = self._queue.get_nowait
        try:
            while len(batch) < limit:
                batch.extend(get())
        except queue.Empty:
            pass
        size = sum(len(k) + len(v) for k, v in batch)
        with self._cond:
            self._queued_bytes -= size
            self._cond.notify_all()
        return batch

    def _send_direct(self, batch: list[Line]) -> None:
        records = pack(batch)
        done = self._send(records)
        with self._cond:
            self._sent += _events(records[:done])
        if done < len(records):
            # Everything after the first unacknowledged record is spooled too, to keep the order.
            self._go_spooling()
            self._to_spool(records[done:])

    def _send(self, records: Sequence[Record]) -> int:
        """Send and wait; return how many records, from the start, the broker acknowledged."""
        producer = self._producer
        if producer is None:
            return 0
        futures: list[FutureRecordMetadata] = []
        try:
            for key, payload in records:
                futures.append(producer.send(self._topic, key=key, value=payload))
            producer.flush(timeout=self._send_timeout)
        except KafkaError as exc:
            log.warning("kafka send failed: %s", exc)
        acked = 0
        for fut in futures:
            if not (fut.is_done and fut.succeeded()):
                break
            acked += 1
        return acked

    def _to_spool(self, records: Sequence[Record]) -> None:
        """Append, or raise with the state recorded: the caller keeps the batch and tries again."""
        try:
            self._spool.append(records)
        except (sqlite3.Error, OSError) as exc:
            if self._spool_error is None:
                log.critical(
                    "usage spool %s refuses events (%s) while kafka is unavailable: %d events held in memory; "
                    "the gateway stops admitting requests until one of them takes events again",
                    self._spool.path, exc, _events(records),
                )  # fmt: skip
            self._spool_error = str(exc)
            raise
        if self._spool_error is not None:
            log.warning("usage spool takes events again")
            self._spool_error = None
        self._spool_bytes = self._spool.used_bytes()
        with self._cond:
            self._spooled += _events(records)

    def _go_spooling(self) -> None:
        log.warning("kafka unavailable: spooling usage events to %s", self._spool.path)
        self._direct = False
        if self._producer is not None:
            abandon(self._producer)
            self._producer = None
        self._next_attempt = time.monotonic() + self._retry_interval

    def _connect(self) -> bool:
        try:
            ensure_topic(self._settings, self._topic, bootstrap_timeout_ms=self._connect_timeout_ms)
            self._producer = KafkaProducer(
                **client_config(self._settings, bootstrap_timeout_ms=self._connect_timeout_ms),
                **self._producer_options(),
            )
            return True
        except KafkaError as exc:
            log.info("kafka not reachable yet: %s", exc)
            return False

    def _producer_options(self) -> dict[str, Any]:
        return {
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "max_block_ms": int(self._send_timeout * 1000),
            "request_timeout_ms": int(self._send_timeout * 1000),
        }

    def _replay_round(self) -> None:
        """Reconnect if needed, then move the spool to Kafka for a while; go direct once it is empty."""
        if self._producer is None and not self._connect():
            self._next_attempt = time.monotonic() + self._retry_interval
            return
        if self._spool.is_empty():
            if not self._direct:
                log.info("kafka reachable: sending usage events directly")
            self._direct = True
            self._spool_error = None
            # Other processes sharing the spool may append later; look again now and then.
            self._next_attempt = time.monotonic() + 5 * self._retry_interval
            return
        with self._spool.replay_lock() as mine:
            if not mine:
                self._next_attempt = time.monotonic() + self._retry_interval
                return
            deadline = time.monotonic() + _REPLAY_BURST_SECONDS
            while time.monotonic() < deadline:
                rows = self._spool.peek(_REPLAY_RECORDS)
                if not rows:
                    break
                acked = self._send([(key, payload) for _, key, payload in rows])
                if acked:
                    self._spool.delete_through(rows[acked - 1][0])
                    self._spool_bytes = self._spool.used_bytes()
                    with self._cond:
                        self._replayed += _events(rows[:acked])
                if acked < len(rows):
                    self._go_spooling()
                    return
        # Come back at once: either to finish the spool or to notice it is empty and go direct.
        self._next_attempt = 0.0


def _events(records: Sequence[tuple[Any, ...]]) -> int:
    """How many events these records (or spool rows, the value last) hold."""
    return sum(events_in(r[-1]) for r in records)
