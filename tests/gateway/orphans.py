"""No `eduaiq gateway` (or `eduaiq serve`) process, worker or usage sidecar a test started outlives it.

A process is this test session's when its EDUAIQ_STATE_DIR lies under the session's base temporary
directory (every stack the harness starts sets it there; other sessions on the machine have their own).
An orphan is no longer our descendant (it was reparented), so ancestry cannot find it: the environment can.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

_MARKS = ("cli gateway", "cli serve", "usage.sidecar")
_WAIT_SECONDS = 90.0  # a process on its way out, on a loaded machine


def gateway_processes(basetemp: str) -> dict[int, str]:
    """pid -> command line of this session's gateway, one-origin server, worker and sidecar processes."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] == psutil.STATUS_ZOMBIE or not any(m in cmdline for m in _MARKS):
                continue
            if proc.environ().get("EDUAIQ_STATE_DIR", "").startswith(basetemp):
                found[proc.info["pid"]] = cmdline
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def check_none_left(before: dict[int, str], basetemp: str, scope: str) -> None:
    deadline = time.monotonic() + _WAIT_SECONDS
    while left := {p: c for p, c in gateway_processes(basetemp).items() if p not in before}:
        if time.monotonic() > deadline:
            for pid in left:  # so that one failure does not leave them running for the next tests
                try:
                    psutil.Process(pid).kill()
                except psutil.NoSuchProcess:
                    pass
            pytest.fail(f"gateway processes outlived their {scope}: {left}")
        time.sleep(0.2)


@pytest.fixture(autouse=True, scope="module")
def no_orphan_gateways_after_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module-scoped stacks stop after the module's last test: checked after them."""
    basetemp = str(tmp_path_factory.getbasetemp())
    before = gateway_processes(basetemp)
    yield
    check_none_left(before, basetemp, "module")


@pytest.fixture(autouse=True)
def no_orphan_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    basetemp = str(tmp_path_factory.getbasetemp())
    before = gateway_processes(basetemp)
    yield
    check_none_left(before, basetemp, "test")
