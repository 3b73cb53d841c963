"""The gateway's producer process: every event reaches the broker once and in order, through a flush, a
killed sidecar, a gateway that closes, and a gateway that is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.settings import Settings
from tests.usage.helpers import make_event, read_topic, wait_for
from usage.events import encode, kafka_key
from usage.sidecar import ProducerSidecar, serve


def _emit(sidecar: ProducerSidecar, institutions: list[str], seqs: range) -> None:
    for i in seqs:
        event = make_event(institutions[i % len(institutions)], i)
        sidecar.emit_line(kafka_key(event), encode(event))


def _assert_once_in_order(got: list[tuple[bytes, int]], institutions: list[str], n: int) -> None:
    assert sorted(seq for _, seq in got) == list(range(n))  # each event once
    for inst in institutions:
        mine = [seq for key, seq in got if key == inst.encode()]
        assert mine == sorted(mine)  # in emission order per institution (one partition each)


@pytest.fixture
async def sidecar(usage_settings: Settings) -> AsyncIterator[ProducerSidecar]:
    started = ProducerSidecar(usage_settings)
    await started.start()
    yield started
    await started.close()  # a no-op for a test that closed it itself


async def test_events_reach_the_broker_once_in_order_and_flush_waits_for_them(
    sidecar: ProducerSidecar, usage_settings: Settings, unique_id: str
) -> None:
    institutions = [f"{unique_id}-{n}" for n in range(3)]
    _emit(sidecar, institutions, range(600))
    assert await sidecar.flush(30)  # with the broker: the topic below holds them without a close
    assert sidecar.stats().pending == 0 and sidecar.stats().direct
    assert sidecar.stats().sent == 600
    _assert_once_in_order(read_topic(usage_settings, 600), institutions, 600)


async def test_a_killed_sidecar_is_replaced_and_the_pipe_keeps_what_it_had_not_read(
    sidecar: ProducerSidecar, usage_settings: Settings, unique_id: str
) -> None:
    institutions = [f"{unique_id}-{n}" for n in range(2)]
    _emit(sidecar, institutions, range(100))
    assert await sidecar.flush(30)
    first = sidecar._proc
    assert first is not None
    first.send_signal(signal.SIGSTOP)  # it reads nothing more; what follows waits in the pipe
    _emit(sidecar, institutions, range(100, 400))
    assert not await sidecar.flush(1)
    first.kill()
    assert await sidecar.flush(60)  # answered by the replacement, after it read the whole pipe
    assert sidecar._proc is not None and sidecar._proc.pid != first.pid
    _assert_once_in_order(read_topic(usage_settings, 400), institutions, 400)


async def test_closing_hands_everything_over_before_the_sidecar_exits(
    sidecar: ProducerSidecar, usage_settings: Settings, unique_id: str
) -> None:
    institutions = [unique_id]
    _emit(sidecar, institutions, range(1000))
    await sidecar.close()  # no flush first: close itself must not lose the tail
    assert sidecar._proc is not None and sidecar._proc.returncode == 0
    _assert_once_in_order(read_topic(usage_settings, 1000), institutions, 1000)


_KILLED_GATEWAY = """
import asyncio, os, signal, sys
from core.settings import Settings
from tests.usage.helpers import make_event
from usage.events import encode, kafka_key
from usage.sidecar import ProducerSidecar

async def main():
    sidecar = ProducerSidecar(Settings.model_validate_json(sys.argv[1]))
    await sidecar.start()
    for i in range(300):
        event = make_event(sys.argv[2], i)
        sidecar.emit_line(kafka_key(event), encode(event))
    await asyncio.sleep(0.2)  # the lines are written to the pipe within milliseconds
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_a_killed_gateway_loses_nothing_it_had_written_to_the_pipe(
    usage_settings: Settings, unique_id: str
) -> None:
    """SIGKILL gives the gateway no chance to flush; its sidecar sees the pipe end and hands over the rest."""
    root = Path(__file__).resolve().parents[2]
    gateway = subprocess.run(
        [sys.executable, "-c", _KILLED_GATEWAY, usage_settings.model_dump_json(), unique_id],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=60,
    )  # fmt: skip
    assert gateway.returncode == -signal.SIGKILL

    def delivered() -> bool:
        return len(read_topic(usage_settings, 300, 2000)) >= 300

    wait_for(delivered, 60, "the orphaned sidecar to send every event")
    _assert_once_in_order(read_topic(usage_settings, 300), [unique_id], 300)


def test_the_rest_of_a_line_a_dead_sidecar_began_is_dropped_and_whole_lines_are_kept(
    usage_settings: Settings, unique_id: str
) -> None:
    read_fd, write_fd = os.pipe()
    status_r, status_w = os.pipe()
    events = [make_event(unique_id, i) for i in range(2)]
    os.write(write_fd, b'unit":"cs101","tokens":12}\n')  # the tail of a line whose head was read and lost
    for e in events:
        os.write(write_fd, b"\x1e%s\t%s\n" % (kafka_key(e), encode(e)))
    os.close(write_fd)
    reports: list[bytes] = []
    reader = threading.Thread(target=lambda: reports.append(os.read(status_r, 1 << 16)), daemon=True)
    reader.start()
    serve(usage_settings, read_fd, status_w)  # returns at the pipe's end, after sending everything
    os.close(read_fd)
    os.close(status_w)
    reader.join(5)
    os.close(status_r)
    assert reports and b'"direct"' in reports[0]
    assert read_topic(usage_settings, 2) == [(unique_id.encode(), 0), (unique_id.encode(), 1)]


@pytest.mark.parametrize("key", [b"a\tb", b"a\nb", b"\x1eab", b"a\x00"])
async def test_keys_that_would_break_the_line_framing_are_refused(
    sidecar: ProducerSidecar, key: bytes
) -> None:
    with pytest.raises(ValueError, match="framing"):
        sidecar.emit_line(key, b"{}")
