#!/usr/bin/env python3
"""Time from `./eduaiq dev` to the first answered chat request, on a warm install (the .venv exists).

    python bench/quickstart.py [--runs 3]

Each run uses a fresh state directory (so PostgreSQL is initialised from scratch: the slowest case) and
free ports, polls the gateway with the demo key until a streamed answer arrives, then stops the stack
with SIGTERM. Prints the seconds per run and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cli.services.process import free_port, free_port_block  # noqa: E402


def one_run() -> float:
    port, model_port, base = free_port(), free_port(), free_port_block(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDUAIQ_")}
    with tempfile.TemporaryDirectory(prefix="eduaiq-qs-") as state:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(HERE.parent / "eduaiq"), "dev", "--state-dir", state, "--port", str(port),
             "--services-port-base", str(base), "--demo-model-port", str(model_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            body = {"model": "demo-chat", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
            headers = {"Authorization": "Bearer sk-eduaiq-demo-alice-cs101"}
            while True:
                if proc.poll() is not None:
                    raise SystemExit("eduaiq dev exited before answering")
                try:
                    r = httpx.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers, timeout=10
                    )
                    if r.status_code == 200 and "[DONE]" in r.text:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    runs = [round(one_run(), 2) for _ in range(ap.parse_args().runs)]
    print(json.dumps({"seconds_to_first_answer": runs, "median": statistics.median(runs)}))


if __name__ == "__main__":
    main()
