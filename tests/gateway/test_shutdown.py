"""Stopping `eduaiq gateway` while a student's answer streams: the stream runs on for the configured grace
period (EDUAIQ_SHUTDOWN_GRACE_SECONDS), a second signal cuts it at once, and a cut stream is still in the
ledger with what it produced."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.gateway.harness import Stack, gateway_stack
from tests.usage.helpers import query, wait_for

# The demo model answers this prompt with 32 words: ~16 s of stream. A stream without its "[DONE]" was cut
# before its end, which is what these tests check (no timing threshold: the machine may be loaded).
SLOW_STREAM = ("--chunk-delay-ms", "500")


class Reader(threading.Thread):
    """Reads one streamed chat answer line by line, as a client would, until it ends or is cut."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.lines: list[str] = []
        self.started = threading.Event()
        self.cut = False
        self.status = 0
        self.refusals: list[str] = []

    def run(self) -> None:
        body = {"model": "demo-chat", "messages": [{"role": "user", "content": "tell me a long story"}],
                "max_tokens": 60, "stream": True}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.stack.key('alice')}"}
        try:
            with httpx.Client(timeout=60) as client:
                for _ in range(20):  # a 503 says "retry shortly" (as the SDKs do), e.g. right after start-up
                    with client.stream(
                        "POST", f"{self.stack.base_url}/v1/chat/completions", json=body, headers=headers
                    ) as r:
                        self.status = r.status_code
                        if r.status_code == 503:
                            self.refusals.append(r.read().decode(errors="replace"))
                            time.sleep(1.0)
                            continue
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                self.lines.append(line)
                                self.started.set()
                        return
        except httpx.HTTPError:
            self.cut = True

    def failed_to_start(self) -> str:
        return f"no stream: status {self.status}, cut {self.cut}, 503s {self.refusals[-3:]}"

    def data_lines(self) -> int:
        return len(self.lines)


def _ledger_rows(stack: Stack) -> list[tuple[str, int]]:
    return [(str(s), int(n)) for s, n in query(
        stack.db_url, "SELECT status, output_tokens FROM usage_event WHERE institution_id = %s", stack.institution
    )]  # fmt: skip


def _cut_rows(stack: Stack) -> list[tuple[str, int]]:
    """The cut stream's row in the ledger (a request refused with a 503 and retried may have its own),
    waited for; on time-out the failure lists every row."""
    try:
        wait_for(lambda: any(s == "client_abort" for s, _ in _ledger_rows(stack)), 90,
                 "the cut stream's usage event in the ledger")  # fmt: skip
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the ledger holds {_ledger_rows(stack)}") from None
    return [row for row in _ledger_rows(stack) if row[0] == "client_abort"]


def test_a_stream_outlives_the_stop_for_the_grace_period_then_is_cut_and_still_metered(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, consumer=True,
                       upstream_args=SLOW_STREAM, extra_env={"EDUAIQ_SHUTDOWN_GRACE_SECONDS": "2"}) as stack:  # fmt: skip
        reader = Reader(stack)
        reader.start()
        assert reader.started.wait(60), reader.failed_to_start()
        gateway = stack.gateway_process()
        gateway.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        during_grace = reader.data_lines()
        reader.join(60)
        assert not reader.is_alive()
        assert gateway.wait(120) == 0
        assert reader.data_lines() > during_grace  # it streamed on after the stop...
        assert "data: [DONE]" not in reader.lines  # ...and was cut before its end, at the grace period
        [(_, output_tokens)] = _cut_rows(stack)
        assert output_tokens >= reader.data_lines() - 1


def test_a_second_stop_signal_cuts_the_streams_at_once(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, consumer=True,
                       upstream_args=SLOW_STREAM) as stack:  # fmt: skip
        reader = Reader(stack)
        reader.start()
        assert reader.started.wait(60), reader.failed_to_start()
        gateway = stack.gateway_process()
        gateway.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert reader.is_alive()  # the default grace period is minutes: the stream goes on
        gateway.send_signal(signal.SIGTERM)
        reader.join(60)
        assert not reader.is_alive() and "data: [DONE]" not in reader.lines
        assert gateway.wait(120) == 0
        assert len(_cut_rows(stack)) == 1


def test_ctrl_c_reaching_every_worker_at_once_is_one_stop_and_a_second_ctrl_c_cuts(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """With --workers, a terminal's Ctrl-C reaches the supervisor and every worker at once (SIGINT to the
    process group) and the supervisor passes it on as SIGTERM: the workers must see one stop, not two."""
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, consumer=True, workers=2,
                       upstream_args=SLOW_STREAM) as stack:  # fmt: skip
        reader = Reader(stack)
        reader.start()
        assert reader.started.wait(60), reader.failed_to_start()
        gateway = stack.gateway_process()
        os.killpg(gateway.pid, signal.SIGINT)  # the harness starts the gateway in its own process group
        at_stop = reader.data_lines()
        time.sleep(1.5)
        assert reader.is_alive() and reader.data_lines() > at_stop  # one stop: it streams on
        os.killpg(gateway.pid, signal.SIGINT)
        reader.join(60)
        assert not reader.is_alive() and "data: [DONE]" not in reader.lines
        assert gateway.wait(120) == 0
        assert len(_cut_rows(stack)) == 1
