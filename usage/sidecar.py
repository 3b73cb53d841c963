"""The gateway's usage producer, in a process of its own beside each gateway process.

Why a process: the Kafka client (kafka-python) runs two threads, and in the
gateway's process they competed with the event loop for the GIL. Measured
with `bench/gateway.py` at concurrency 64, taking the producer out of the
process cut the gateway's CPU per request by about a fifth: far more than the
threads' own work, because every hand-over of the GIL waits for the operating
system to schedule the other thread on a busy machine.

The gateway writes each event as one line, ``RS <kafka key> TAB <event JSON> LF``
(RS, the ASCII record separator, marks where a line starts: JSON escapes it and
keys may not hold it), to a pipe; the sidecar reads the pipe and hands the
events to an ordinary `UsageProducer` (which sends them, or spools them to disk
while the broker is away). ``RS NUL F<n> LF`` is a control line: it asks the sidecar
to acknowledge, once everything before it is with the broker or in the spool,
by writing ``{"flushed": n, ...}`` on its status pipe, where it also reports
its producer's state twice a second (what `/readyz` shows).

Nothing is lost when the sidecar dies: the gateway keeps the pipe's reading
end open, so what the dead sidecar had not read stays in the pipe, and the
replacement it starts drops the rest of a line its predecessor had begun (a line
that does not start with RS) and reads on. Lost with a dead sidecar is only
what it had read and not yet sent or spooled, as with any producer's memory. When the gateway
stops (or dies), the pipe reaches its end and the sidecar sends or spools
everything it holds before it exits.

Admission (issue 16 item 10): the gateway must never serve a request it cannot
meter. `ProducerSidecar.admitting` is False, and the gateway answers new /v1
requests 503 with Retry-After and /readyz turns not-ready, while either
- the sidecar reports `blocked` (the broker is unavailable and the spool refuses:
  a full disk or `EDUAIQ_SPOOL_MAX_BYTES`), or
- this process holds `EDUAIQ_USAGE_BUFFER_MAX_BYTES` of lines the sidecar has not
  taken (it is stuck, too slow, or being restarted; the sidecar itself stops reading
  its pipe once its own queue holds `EDUAIQ_USAGE_QUEUE_MAX_BYTES`).
Requests already admitted still emit their events (the buffer may pass its bound
by those): nothing accepted is dropped. A sidecar that dies or cannot start is
restarted with exponential backoff (0.2 s doubling to 30 s; back to 0.2 s once one
has lived 30 s), not in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace

import orjson

from core.settings import Settings
from usage.producer import ProducerStats, UsageProducer

log = logging.getLogger(__name__)

_SETTINGS_ENV = "EDUAIQ_SIDECAR_SETTINGS"
_PIPE_BYTES = 1 << 20  # room for ~2,000 events while the sidecar is busy or being replaced
_REPORT_EVERY = 0.5
# Lines gather for this long and go to the pipe in one write: a write per request was a system call
# per request; a killed gateway loses at most this much (the sidecar hands over the rest).
_WRITE_EVERY = 0.005
_F_SETPIPE_SZ = 1031  # Linux
_RESPAWN_FIRST = 0.2
_RESPAWN_MAX = 30.0
_RS = b"\x1e"
_FRAMING = frozenset(b"\x1e\t\n\0")


class ProducerSidecar:
    """The gateway's side: queue lines from the event loop, start and watch the sidecar process.
    Create, `start()` and use it inside the serving event loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._read_fd, self._write_fd = os.pipe()
        with contextlib.suppress(OSError):  # a larger pipe where the kernel allows it
            fcntl.fcntl(self._write_fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_blocking(self._write_fd, False)
        self._buffer: list[bytes] = []
        self._buffered = 0  # bytes in _buffer
        self._max_held = settings.usage_buffer_max_bytes
        self._unsent = b""
        self._scheduled = False
        self._writing = False
        self._closed = False
        self._emitted = 0
        self._reported = ProducerStats(emitted=0, sent=0, spooled=0, replayed=0, pending=0, direct=False)
        self._flush_seq = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.respawn_delay = 0.0  # while a restart is waiting: how long that wait is
        self._running = False  # a sidecar process is up and has reported
        self._watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        first = await self._spawn()  # before any event: closing must always find a sidecar to drain the pipe
        self._watch = asyncio.create_task(self._run(first), name="usage-sidecar")

    # -- the request path -------------------------------------------------------------------------

    def emit_line(self, key: bytes, line: bytes) -> None:
        """Never blocks: the line goes to the pipe with the others of the next `_WRITE_EVERY` seconds."""
        if self._closed:
            raise RuntimeError("usage producer is closed")
        if _FRAMING.intersection(key) or b"\n" in line or _RS in line:
            raise ValueError("usage event key or line would break the pipe's line framing")
        framed = b"\x1e%s\t%s\n" % (key, line)
        self._buffer.append(framed)
        self._buffered += len(framed)
        self._emitted += 1
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_later(_WRITE_EVERY, self._write)

    def _write(self) -> None:
        """One write for everything emitted since the last; what the pipe cannot take now is kept, in
        order, and written when the pipe has room again."""
        self._scheduled = False
        if self._buffer:
            self._unsent += b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
        if not self._unsent:
            return
        try:
            done = os.write(self._write_fd, self._unsent)
        except BlockingIOError:
            done = 0
        self._unsent = self._unsent[done:]
        assert self._loop is not None
        if self._unsent and not self._writing:
            self._writing = True
            self._loop.add_writer(self._write_fd, self._write)
        elif not self._unsent and self._writing:
            self._writing = False
            self._loop.remove_writer(self._write_fd)

    # -- admission --------------------------------------------------------------------------------

    def held_bytes(self) -> int:
        """Lines this process holds that the sidecar has not taken (the kernel's pipe buffer aside)."""
        return self._buffered + len(self._unsent)

    @property
    def admitting(self) -> bool:
        """May the gateway take a new billable request: its usage event has somewhere to go."""
        return not self._reported.blocked and self._buffered + len(self._unsent) < self._max_held

    def state(self) -> str:
        """One phrase for /readyz: why events cannot be taken, or where they go."""
        if self._reported.blocked:
            return "refusing: kafka unavailable and the spool refuses events (full)"
        if self.held_bytes() >= self._max_held:
            return f"refusing: {self.held_bytes()} bytes of events wait for the usage sidecar"
        if not self._running and self.restarts == 0:
            return "sidecar starting"
        if not self._running:
            return f"sidecar restarting (restart {self.restarts}, backoff {self.respawn_delay:.1f}s)"
        r = self._reported
        return "ok" if r.direct else f"spooling ({r.pending} pending)"

    # -- control ----------------------------------------------------------------------------------

    def stats(self) -> ProducerStats:
        """The sidecar's last report, with what this process has not handed to it yet as pending."""
        unwritten = len(self._buffer) + self._unsent.count(b"\n", 0, 1 << 20)
        r = self._reported
        return replace(r, emitted=self._emitted, pending=r.pending + unwritten)

    async def flush(self, within: float = 10.0) -> bool:
        """Wait until every line emitted so far is with the broker or in the spool."""
        assert self._loop is not None
        self._flush_seq += 1
        seq = self._flush_seq
        waiter = self._loop.create_future()
        self._flush_waiters.append((seq, waiter))
        self._buffer.append(b"\x1e\0F%d\n" % seq)
        self._write()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), within)
            return True
        except TimeoutError:
            return False

    def all_in_kafka(self) -> bool:
        """After `close`: the sidecar exited on its own having sent every event to Kafka (nothing spooled,
        nothing lost), so this process holds no usage a rebuild of the counters could miss."""
        r = self.stats()
        ended = self._watch is not None and self._watch.done() and not self._watch.cancelled()
        return self._closed and ended and r.direct and r.pending == 0

    async def close(self, within: float = 30.0) -> None:
        """Hand everything over, close the pipe and let the sidecar send or spool it all before it exits."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + within
        while (self._buffer or self._unsent) and time.monotonic() < deadline:
            self._write()
            await asyncio.sleep(0.01)
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self._write_fd)
        os.close(self._write_fd)
        assert self._watch is not None
        try:  # the sidecar reads to the pipe's end, sends or spools it all and exits; the watch then ends
            await asyncio.wait_for(asyncio.shield(self._watch), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            # Kafka and the spool both unavailable at shutdown: what the sidecar holds cannot be saved. Say how much.
            log.critical(
                "usage sidecar did not finish within %.0fs; killing it: %d usage events it held are lost",
                within, self.stats().pending,
            )  # fmt: skip
            if self._proc is not None:
                self._proc.kill()
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        os.close(self._read_fd)

    # -- the sidecar process ----------------------------------------------------------------------

    async def _spawn(self) -> tuple[subprocess.Popen[bytes], int]:
        status_r, status_w = os.pipe()
        env = {**os.environ, _SETTINGS_ENV: self._settings.model_dump_json()}
        args = [sys.executable, "-m", "usage.sidecar", str(self._read_fd), str(status_w)]
        try:
            proc = await asyncio.to_thread(
                subprocess.Popen, args, env=env, pass_fds=(self._read_fd, status_w)
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        self._proc = proc
        return proc, status_r

    async def _run(self, first: tuple[subprocess.Popen[bytes], int]) -> None:
        """Read the sidecar's reports; whenever it dies, start another on the same pipe. Ends when one
        exits cleanly after the gateway closed the pipe (it read to the end and handed everything over).
        Restarts back off exponentially: a sidecar that cannot start (a spool directory it cannot
        create, memory it cannot get) is not restarted five times a second for ever."""
        proc, status_r = first
        delay = _RESPAWN_FIRST
        while True:
            born = time.monotonic()
            try:
                await self._read_reports(status_r)
            finally:
                os.close(status_r)
                self._running = False
            code = await asyncio.to_thread(proc.wait)
            if code == 0 and self._closed:
                return
            if time.monotonic() - born >= _RESPAWN_MAX:
                delay = _RESPAWN_FIRST  # it had been running well: this is a new failure, not the same one
            why = f"exited with {code}"
            while True:
                self.restarts += 1
                self.respawn_delay = delay
                log.error(
                    "usage sidecar %s; starting a new one in %.1fs (unread events wait in the pipe)",
                    why,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESPAWN_MAX)
                try:
                    proc, status_r = await self._spawn()
                    break
                except OSError as exc:
                    why = f"could not be started ({exc})"
            self.respawn_delay = 0.0

    async def _read_reports(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                with contextlib.suppress(orjson.JSONDecodeError):
                    self._on_report(orjson.loads(line))
        finally:
            transport.close()

    def _on_report(self, report: dict[str, int | bool]) -> None:
        flushed = int(report.pop("flushed"))
        self._running = True
        self._reported = ProducerStats(**report)  # type: ignore[arg-type]
        waiting = []
        for seq, waiter in self._flush_waiters:
            if seq <= flushed:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((seq, waiter))
        self._flush_waiters = waiting


# -- the sidecar's own side ---------------------------------------------------------------------------


class _Reporter:
    def __init__(self, producer: UsageProducer, fd: int) -> None:
        self._producer = producer
        self._fd = fd
        self._lock = threading.Lock()
        self.flushed = 0

    def report(self) -> None:
        line = orjson.dumps({**asdict(self._producer.stats()), "flushed": self.flushed})
        with self._lock, contextlib.suppress(BrokenPipeError):
            os.write(self._fd, line + b"\n")

    def every(self, seconds: float, stop: threading.Event) -> None:
        self.report()
        while not stop.wait(seconds):
            self.report()


def serve(settings: Settings, read_fd: int, status_fd: int) -> None:
    producer = UsageProducer(settings)
    reporter = _Reporter(producer, status_fd)
    stop = threading.Event()
    threading.Thread(target=reporter.every, args=(_REPORT_EVERY, stop), daemon=True).start()
    pending = b""
    while chunk := os.read(read_fd, 1 << 20):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        events: list[tuple[bytes, bytes]] = []  # handed over at once: one queue put per read
        for line in lines:
            if not line.startswith(_RS):  # the rest of a line a dead predecessor had begun
                log.warning("dropped the rest of a usage line a previous sidecar had begun reading")
            elif line.startswith(b"\x1e\0F"):
                if events:
                    producer.emit_lines(events)
                    events = []
                producer.flush(None)
                reporter.flushed = int(line[3:])
                reporter.report()
            else:
                key, _, event = line[1:].partition(b"\t")
                events.append((key, event))
        if events:
            producer.emit_lines(events)
    producer.close()
    stop.set()
    reporter.report()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s usage-sidecar %(levelname)s %(message)s")
    # It stops when the gateway closes the pipe (or dies), never on a signal meant for the gateway (a
    # terminal's Ctrl-C, a process group's SIGTERM): it must outlive the gateway to hand over the events.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = Settings.model_validate_json(os.environ[_SETTINGS_ENV])
    serve(settings, int(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
