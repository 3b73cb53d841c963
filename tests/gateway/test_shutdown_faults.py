"""Shutdown ends even when what it waits for does not answer (issue 16 item 8).

Redis stops answering (SIGSTOP: connections stay open, nothing comes back, as on a hung server or a
network partition) while a request waits on it; then the gateway is told to stop. Its shutdown used to
wait for that Redis for ever; every step of it is now bounded, and the process ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import httpx

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
                gateway.wait(300)
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
