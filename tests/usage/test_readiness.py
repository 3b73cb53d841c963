"""Readiness and Redis timeouts on the data plane (issue 16 item 13), with real gateway, PostgreSQL and Redis.

The hot path reads PostgreSQL only for keys it has not cached, so a database restart must not take every
gateway out of service: /readyz stays 200 and reports the database as degraded, and keys seen before keep
working. A Redis that stops answering fails a request after
EDUAIQ_REDIS_SOCKET_TIMEOUT instead of holding it for ever (redis-py's default).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.services.postgres import SUPERUSER, data_dir_for, start_postgres
from cli.services.process import free_port
from cli.services.redis import start_redis
from tests.gateway.harness import gateway_stack
from tests.usage.helpers import wait_for

pytestmark = pytest.mark.slow


def _ask(stack: Any, content: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        stack.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {stack.key('alice')}"},
        json={"model": "demo-chat", "max_tokens": 4, "messages": [{"role": "user", "content": content}]},
        timeout=timeout,
    )


def test_the_data_plane_stays_ready_through_a_postgres_restart(
    redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    pg = start_postgres(tmp_path / "pg", port)
    try:
        server = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
        (tmp_path / "stack").mkdir()
        # No key cache: every request looks its key up, so the requests below meet the stopped database.
        with gateway_stack(server, redis_url, kafka_bootstrap, tmp_path / "stack",
                           extra_env={"EDUAIQ_KEY_CACHE_SECONDS": "0"}) as stack:  # fmt: skip
            assert _ask(stack, "warm").status_code == 200
            pg.stop()
            for i in range(10):  # several probes while the database is away: a kubelet's failureThreshold
                ready = httpx.get(stack.base_url + "/readyz", timeout=30)
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["postgres"].startswith("degraded")
                # And it serves: the key's last answer stands in for the database.
                during = _ask(stack, f"during {i}")
                assert during.status_code == 200, during.text
            pg = start_postgres(tmp_path / "pg", port)

            def recovered() -> bool:
                ready = httpx.get(stack.base_url + "/readyz", timeout=30)
                return ready.status_code == 200 and ready.json()["checks"]["postgres"] == "ok"

            wait_for(recovered, 120, "the database check to recover")
            assert _ask(stack, "after").status_code == 200
    finally:
        pg.stop()
        shutil.rmtree(data_dir_for(tmp_path / "pg"), ignore_errors=True)


def _frozen_redis(tmp_path: Path) -> tuple[Any, str]:
    port = free_port()
    return start_redis(tmp_path / "redis", port, persist=False), f"redis://127.0.0.1:{port}/0"


def test_the_redis_socket_timeout_setting_is_what_the_gateway_waits(
    pg_server_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """EDUAIQ_REDIS_SOCKET_TIMEOUT=60: a Redis frozen (SIGSTOP) for 8 s, longer than redis-py's own 5 s
    default, delays the request and it is served once Redis answers. Without the setting applied the
    request failed after 5 s."""
    redis, url = _frozen_redis(tmp_path)
    try:
        env = {"EDUAIQ_REDIS_SOCKET_TIMEOUT": "60"}
        (tmp_path / "stack").mkdir()
        with gateway_stack(pg_server_url, url, kafka_bootstrap, tmp_path / "stack", extra_env=env) as stack:
            assert _ask(stack, "warm").status_code == 200
            answers: list[httpx.Response] = []
            os.killpg(redis.proc.pid, signal.SIGSTOP)
            try:
                asking = threading.Thread(target=lambda: answers.append(_ask(stack, "frozen", timeout=120)))
                asking.start()
                time.sleep(8)  # the fault's length, not a bound on anything measured
            finally:
                os.killpg(redis.proc.pid, signal.SIGCONT)
            asking.join(120)
            assert answers and answers[0].status_code == 200, answers and answers[0].text
    finally:
        redis.stop()


def test_a_redis_that_stops_answering_fails_the_request_after_the_socket_timeout(
    pg_server_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Redis frozen: with EDUAIQ_REDIS_SOCKET_TIMEOUT=1 the request gets an error in the OpenAI shape (not a
    hang) and /readyz says not ready; once Redis answers again requests succeed."""
    redis, url = _frozen_redis(tmp_path)
    try:
        env = {"EDUAIQ_REDIS_SOCKET_TIMEOUT": "1", "EDUAIQ_REDIS_CONNECT_TIMEOUT": "1"}
        (tmp_path / "stack").mkdir()
        with gateway_stack(pg_server_url, url, kafka_bootstrap, tmp_path / "stack", extra_env=env) as stack:
            assert _ask(stack, "warm").status_code == 200
            os.killpg(redis.proc.pid, signal.SIGSTOP)
            try:
                answer = _ask(stack, "frozen", timeout=90)
                assert answer.status_code >= 500
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
                assert httpx.get(stack.base_url + "/readyz", timeout=30).status_code == 503
            finally:
                os.killpg(redis.proc.pid, signal.SIGCONT)
            wait_for(lambda: _ask(stack, "thawed").status_code == 200, 120, "requests to succeed again")
    finally:
        redis.stop()
