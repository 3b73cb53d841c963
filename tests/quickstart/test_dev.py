"""The quick start as a new user runs it: `eduaiq dev` on embedded servers, a streamed answer through the
openai SDK with a demo key, Ctrl-C/SIGTERM leaving nothing behind, and a restart that keeps the usage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import psutil
import psycopg2

from cli.services.process import free_port, free_port_block, port_open


def _start(state: Path, port: int, base: int, model_port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDUAIQ_")}  # nothing configured: embedded
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "--state-dir", str(state), "--port", str(port),
         "--services-port-base", str(base), "--demo-model-port", str(model_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_banner(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if "Press Ctrl-C to stop everything" in line:
            return "".join(seen)
    raise AssertionError("eduaiq dev did not start:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(90)


def test_quick_start_streams_an_answer_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port, model_port, base = free_port(), free_port(), free_port_block(3)
    ports = [port, model_port, base, base + 1, base + 2]
    proc = _start(state, port, base, model_port)
    tree: set[int] = set()
    try:
        banner = _wait_banner(proc)
        assert f"http://127.0.0.1:{port}/v1" in banner and "sk-eduaiq-demo-alice-cs101" in banner
        tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert len(tree) >= 6  # postgres, redis, kafka, demo model, consumer, web
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-eduaiq-demo-alice-cs101")
        stream = client.chat.completions.create(model="demo-chat", stream=True,
                                                messages=[{"role": "user", "content": "Hello"}])  # fmt: skip
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert len(text.split()) >= 3
    finally:
        _stop(proc)
    assert proc.returncode == 0
    time.sleep(1)
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left behind: {alive}"
    assert [p for p in ports if port_open("127.0.0.1", p)] == []

    # A restart keeps the institution and its usage (the drained event is in the ledger).
    proc = _start(state, port, base, model_port)
    try:
        _wait_banner(proc)
        conn = psycopg2.connect(host="127.0.0.1", port=base, user="eduaiq", dbname="eduaiq")
        with conn.cursor() as cur:
            cur.execute("select status, output_tokens from usage_event where user_id = 'alice'")
            rows = cur.fetchall()
        conn.close()
        assert [r[0] for r in rows] == ["ok"] and rows[0][1] > 0
    finally:
        _stop(proc)
