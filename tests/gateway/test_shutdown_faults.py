"""Shutdown ends even when what it waits for does not answer (issue 16 item 8).

Redis stops answering (SIGSTOP: connections stay open, nothing comes back, as on a hung server or a
network partition) while a request waits on it; then the gateway is told to stop. Its shutdown used to
wait for that Redis for ever; every step of it is now bounded, and the process ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cli.services.process import free_port
from cli.services.redis import start_redis
from gateway.bounded import bounded
from tests.gateway.harness import gateway_stack


def test_the_gateway_stops_while_redis_hangs_with_a_request_waiting_on_it(
    pg_server_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    redis = start_redis(tmp_path / "redis", port, persist=False)
    try:
        with gateway_stack(pg_server_url, f"redis://127.0.0.1:{port}/0", kafka_bootstrap, tmp_path,
                           extra_env={"EDUAIQ_SHUTDOWN_GRACE_SECONDS": "1"}) as stack:  # fmt: skip
            key = stack.key("alice")
            body = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            headers = {"Authorization": f"Bearer {key}"}
            ok = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
            assert ok.status_code == 200, ok.text
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                waiting = threading.Thread(  # its budget reservation waits on the silent Redis
                    target=lambda: _post_ignoring_errors(
                        f"{stack.base_url}/v1/chat/completions", body, headers
                    ),
                    daemon=True,
                )
                waiting.start()
                waiting.join(3)
                gateway = stack.gateway_process()
                gateway.send_signal(signal.SIGTERM)
                # the bound: grace 1 s + 10 s for cut requests + the lifespan's bounded steps + the kernel's
                # deadline; generous for a loaded machine. Before, it never returned.
                assert gateway.wait(300) == 0  # ended by its own bounded shutdown, not by SIGALRM
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
    finally:
        redis.stop()


def _post_ignoring_errors(url: str, body: object, headers: dict[str, str]) -> None:
    try:
        httpx.post(url, json=body, headers=headers, timeout=300)
    except httpx.HTTPError:
        pass  # cut at shutdown


async def test_a_step_that_swallows_its_cancellation_does_not_hold_the_shutdown() -> None:
    """What redis-py can do on a read cut by a cancellation: asyncio.wait_for would wait for such a step
    for ever after its timeout; gateway/bounded.py returns on time and leaves it behind."""

    async def swallows_once() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # swallowed
        await asyncio.sleep(3600)

    step = asyncio.ensure_future(swallows_once())
    assert await asyncio.wait_for(bounded(step, 0.2, "a stuck step"), 60) is False
    assert not step.done()  # still stuck: left behind, as the process's exit deadline will end it
    step.cancel()


_STUBBORN_APP = """
import asyncio, os, sys
from gateway.bounded import bounded
from gateway.server import Limits, run

async def _stubborn() -> None:
    while True:  # swallows every cancellation, as a stuck client read can
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def app(scope, receive, send):
    if scope["type"] == "http":  # which process answered
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await bounded(asyncio.ensure_future(_stubborn()), 0.2, "a stuck step")
            await send({"type": "lifespan.shutdown.complete"})
            return

limits = Limits(1 << 20, 1 << 16, 100, 10.0, 10.0, 1 << 20, 1 << 24, 100)
run(lambda: app, "127.0.0.1", int(sys.argv[1]), limits=limits, grace=1.0, workers=int(sys.argv[2]))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_step_left_behind_does_not_keep_the_process_alive(workers: int, tmp_path: Path) -> None:
    """A shutdown step `bounded` gave up on is still a task of the event loop. `uvloop.run` cancelled every
    task left after `serve` and waited for each without a bound: a process (or each worker) whose step
    swallowed its cancellation lived on until SIGALRM (exit -14, 80 s later; in CI a worker outlived its
    killed supervisor; with workers, the supervisor killed them at its deadline). It now ends as soon as
    `serve` returns, with 0."""
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", _STUBBORN_APP, str(port), str(workers)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        # Every process answered: each is serving, its stop signal handled (the socket listens before).
        answered: set[str] = set()
        deadline = time.monotonic() + 60
        while len(answered) < workers:
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                answered.add(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text)
            except httpx.HTTPError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(300) == 0, (tmp_path / "server.log").read_text()
        # with workers: each ended on its own with 0, not by SIGALRM nor killed by the supervisor
        assert "gateway worker" not in (tmp_path / "server.log").read_text()
    finally:
        proc.kill()
        proc.wait()
        log.close()
