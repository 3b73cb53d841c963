"""`eduaiq gateway --workers N`: N processes answer on one port, each with its own usage sidecar; a
worker that dies is replaced; SIGTERM stops them all and every answered request reaches the ledger."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tests.gateway.harness import gateway_stack
from tests.usage.helpers import ledger_count


def _until(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def _chat(base_url: str, key: str) -> int:
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    with httpx.Client(timeout=30) as client:  # a new connection each time: the kernel picks the worker
        return client.post(f"{base_url}/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}).status_code  # fmt: skip


def test_two_workers_share_a_port_a_dead_one_is_replaced_and_sigterm_loses_no_event(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    with gateway_stack(
        pg_server_url, redis_url, kafka_bootstrap, tmp_path, consumer=True, workers=2
    ) as stack:
        supervisor_proc = stack.gateway_process()
        supervisor = psutil.Process(supervisor_proc.pid)

        def workers() -> list[psutil.Process]:
            return [c for c in supervisor.children() if "usage.sidecar" not in " ".join(c.cmdline())]

        _until(lambda: len(workers()) == 2, 30, "two workers")
        for worker in workers():  # each worker runs its own producer sidecar
            _until(lambda w=worker: any("usage.sidecar" in " ".join(c.cmdline()) for c in w.children()), 30,
                   "a sidecar per worker")  # fmt: skip
        key = stack.key("alice")
        answered = [_chat(stack.base_url, key) for _ in range(20)]
        assert answered == [200] * 20

        time.sleep(0.5)  # the events of those requests are in the victim's sidecar, not its buffer
        victim = workers()[0]
        victim.kill()
        victim.wait(10)
        _until(lambda: len(workers()) == 2 and victim.pid not in {w.pid for w in workers()}, 30,
               "the dead worker replaced")  # fmt: skip
        _until(lambda: httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200, 30, "ready again")
        more = [_chat(stack.base_url, key) for _ in range(20)]
        assert more == [200] * 20

        last = workers()
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor_proc.wait(60) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in last)
        _until(
            lambda: ledger_count(stack.db_url, stack.institution) == 40,
            90,
            "every answered request in the ledger",
        )


def test_a_hung_worker_is_killed_at_the_shutdown_deadline_and_nothing_is_left(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A worker that does not stop (here: SIGSTOPped, as a worker blocked in a call would be) used to keep
    the supervisor waiting for ever; now the supervisor kills it at the shutdown deadline and exits."""
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, workers=2,
                       extra_env={"EDUAIQ_SHUTDOWN_GRACE_SECONDS": "1"}) as stack:  # fmt: skip
        supervisor_proc = stack.gateway_process()
        supervisor = psutil.Process(supervisor_proc.pid)

        def workers() -> list[psutil.Process]:
            return [c for c in supervisor.children() if "usage.sidecar" not in " ".join(c.cmdline())]

        _until(lambda: len(workers()) == 2, 30, "two workers")
        hung, other = workers()
        hung.suspend()
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor_proc.wait(200)  # the deadline: grace + 80 s + 15 s; generous for a loaded machine
        assert code == 0
        _, alive = psutil.wait_procs([hung, other], timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_workers_stop_when_the_supervisor_is_killed(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGKILL leaves the supervisor no chance to pass anything on: the kernel tells each worker
    (PR_SET_PDEATHSIG) and each stops as on SIGTERM, its sidecar with it."""
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, workers=2) as stack:
        supervisor = psutil.Process(stack.gateway_process().pid)
        _until(lambda: len(supervisor.children(recursive=True)) == 4, 30, "two workers and their sidecars")
        family = supervisor.children(recursive=True)
        supervisor.kill()
        _, alive = psutil.wait_procs(family, timeout=120)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
