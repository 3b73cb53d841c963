"""Start a server as a child process and wait until its port answers; stop it without leaving orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """A first port such that it and the next `count - 1` are all free right now.

    Chosen below the kernel's ephemeral range: a port in that range can be taken as the local end of
    any outgoing connection between this check and the server's bind (it happened to a test run's
    embedded Redis)."""
    import random

    top = min(60000, _ephemeral_low()) - count
    for _ in range(200):
        base = random.randint(min(20000, top - 1000), top)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {count} free ports")


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} opened")
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout:.0f}s")


@dataclass
class Child:
    """A started server: its process, where it listens, and its log file for when it fails."""

    name: str
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path
    stop_signal: int = signal.SIGTERM
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, self.stop_signal)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def die_with_parent() -> None:
    """Runs in the child before exec: its own process group (so a stop reaches what it forks), and the
    kernel sends it SIGTERM if our process dies, even by SIGKILL: nothing is left running behind us."""
    import ctypes

    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    return subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
        env=env,
    )
