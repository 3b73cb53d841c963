"""The dashboard's end-to-end harness: Node, Debian's Chromium, a built frontend and a real `eduaiq dev`.

Skips only when Node or Chromium is missing and cannot be installed (Chromium comes from apt when
running as root). The stack is the lead's quick start, `python -m cli dev --state-dir <tmp> --port <free>`,
with its embedded PostgreSQL, Redis and Kafka-protocol broker and the demo university.

When the server does not serve the dashboard itself yet, `frontend/e2e/serve.mjs` puts the built
files and the server on one origin (it forwards /api, /auth, /v1 and rewrites Origin to the
server's, so the CSRF origin check sees the public URL).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.services.postgres import SUPERUSER
from cli.services.process import free_port, free_port_block

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str | None:
    """The path of Chromium, installing Debian's package when missing; None with the reason printed."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
    return CHROMIUM if Path(CHROMIUM).exists() else None


def ensure_frontend_built() -> None:
    """`npm ci` when node_modules is missing, `npm run build` when dist is older than the sources."""
    if not (FRONTEND / "node_modules" / ".package-lock.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=FRONTEND, check=True, timeout=600)
    index = FRONTEND / "dist" / "index.html"
    newest = max(p.stat().st_mtime for p in (FRONTEND / "src").rglob("*") if p.is_file())
    if not index.exists() or index.stat().st_mtime < newest:
        subprocess.run(["npm", "run", "build"], cwd=FRONTEND, check=True, timeout=600)


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def serves_dashboard(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/units", timeout=5) as r:
            return 'id="root"' in r.read().decode("utf-8", "replace")
    except Exception:
        return False


@dataclass
class Stack:
    server: str  # the EduAiQ server itself
    base: str  # the origin the browser uses (the server, or the one-origin helper in front of it)
    state_dir: Path
    out_dir: Path
    services: dict[str, str]  # EDUAIQ_* URLs of the stack's embedded servers, for commands run beside it

    def run(self, scenario: str, **env: str) -> dict[str, Any]:
        done = subprocess.run(
            ["node", "e2e/scenarios.mjs", scenario],
            cwd=FRONTEND,
            env={**os.environ, "E2E_BASE": self.base, "E2E_OUT": str(self.out_dir), "E2E_PYTHON": sys.executable,
                 "E2E_CHROMIUM": CHROMIUM, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"{scenario} failed:\n{done.stderr}\n{done.stdout}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result, indent=2))
        return result


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def dashboard_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed: the dashboard's e2e tests need Node.js")
    if ensure_chromium() is None:
        pytest.skip("Chromium is absent and cannot be installed here (apt-get as root): no browser for e2e")
    ensure_frontend_built()
    state = tmp_path_factory.mktemp("eduaiq-dev")
    out = Path(os.environ.get("EDUAIQ_E2E_OUT", str(tmp_path_factory.mktemp("screenshots"))))
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    log = (state / "dev.out").open("wb")
    env = {**os.environ, "EDUAIQ_PUBLIC_BASE_URL": server}
    for name in ("EDUAIQ_DATABASE_URL", "EDUAIQ_REDIS_URL", "EDUAIQ_KAFKA_BOOTSTRAP"):
        env.pop(name, None)  # the quick start's own embedded servers
    services = free_port_block(3)  # `eduaiq dev --services-port-base` takes base..base+2
    cmd = [sys.executable, "-m", "cli", "dev", "--state-dir", str(state), "--port", str(port),
           "--services-port-base", str(services), "--demo-model-port", str(free_port())]  # fmt: skip
    dev = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    helper: subprocess.Popen[bytes] | None = None
    try:
        wait_http(f"{server}/api/v1/healthz", 180, dev)
        base = server
        if not serves_dashboard(server):
            front = free_port()
            helper = subprocess.Popen(["node", "e2e/serve.mjs", "--backend", server, "--port", str(front)],
                                      cwd=FRONTEND, stdout=subprocess.DEVNULL)  # fmt: skip
            base = f"http://127.0.0.1:{front}"
            wait_http(f"{base}/", 30, helper)
        print(f"e2e: server {server}, browser origin {base}, screenshots in {out}")
        urls = {
            "EDUAIQ_DATABASE_URL": f"postgresql://{SUPERUSER}@127.0.0.1:{services}/eduaiq",
            "EDUAIQ_REDIS_URL": f"redis://127.0.0.1:{services + 1}/0",
            "EDUAIQ_KAFKA_BOOTSTRAP": f"127.0.0.1:{services + 2}",
        }
        yield Stack(server, base, state, out, urls)
    finally:
        if helper is not None:
            _stop(helper, 10)
        _stop(dev)
        log.close()
