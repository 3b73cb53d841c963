"""`eduaiq dev`: the whole system on one machine, in one process tree, on one origin.

Servers come from the `EDUAIQ_*` URLs when they are set, and are otherwise
started embedded from wheels (PostgreSQL, Redis, the Kafka-protocol broker
tansu) with their data under one state directory. Everything else runs as
child processes of this one, each in its own process group and each told to
die with it, so Ctrl-C, SIGTERM or even a SIGKILL of this process leaves
nothing running.

Stop order matters for "no usage event is lost": the web server first (its
producer flushes, or spools to disk), then the consumer once it has drained
the broker, then the broker (memory-only in the quick start) and the stores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli.services.kafka import start_kafka
from cli.services.postgres import SUPERUSER, ensure_database, start_postgres
from cli.services.process import Child, die_with_parent, port_open, wait_for_port
from cli.services.redis import start_redis
from core.settings import Settings

DEMO_ORG = Path(__file__).with_name("demo") / "demo-university.yaml"
DEMO_MODEL_PORT = 8001


@dataclass
class Stack:
    settings: Settings
    state_dir: Path
    host: str
    port: int
    children: list[Child] = field(default_factory=list)
    log_dir: Path = Path()

    def spawn(self, name: str, args: list[str], wait_port: int | None = None, timeout: float = 60) -> Child:
        log = self.log_dir / f"{name}.log"
        out = log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent, env=env,
        )  # fmt: skip
        child = Child(name, proc, "127.0.0.1", wait_port or 0, log)
        self.children.append(child)
        if wait_port:
            try:
                wait_for_port("127.0.0.1", wait_port, timeout, proc)
            except (RuntimeError, TimeoutError) as exc:
                raise SystemExit(f"eduaiq dev: {name} failed to start ({exc}); see {log}") from None
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        self.children.clear()


def _url_port(url: str, default: int) -> int:
    hostport = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else default


def _services(stack: Stack, port_base: int | None) -> None:
    """Start an embedded server for each `EDUAIQ_*` URL that is not set in the environment.

    Their ports are the settings' defaults, so other `eduaiq` commands run beside the quick start reach
    them with no configuration; `port_base` moves them (PostgreSQL, Redis, Kafka = base, base+1, base+2).
    """
    s = stack.settings
    if "EDUAIQ_DATABASE_URL" not in os.environ:
        port = port_base if port_base else _url_port(s.database_url, 54320)
        _refuse_taken(port, "PostgreSQL")
        stack.children.append(start_postgres(stack.state_dir, port))
        os.environ["EDUAIQ_DATABASE_URL"] = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/eduaiq"
    if "EDUAIQ_REDIS_URL" not in os.environ:
        port = port_base + 1 if port_base else _url_port(s.redis_url, 63790)
        _refuse_taken(port, "Redis")
        stack.children.append(start_redis(stack.state_dir / "redis", port))
        os.environ["EDUAIQ_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    if "EDUAIQ_KAFKA_BOOTSTRAP" not in os.environ:
        port = port_base + 2 if port_base else int(s.kafka_bootstrap.rsplit(":", 1)[1])
        _refuse_taken(port, "Kafka broker")
        stack.children.append(start_kafka(stack.log_dir, port))
        os.environ["EDUAIQ_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
    os.environ["EDUAIQ_STATE_DIR"] = str(stack.state_dir)
    # What browsers and API clients are told to use; the CSRF check compares origins against it.
    os.environ.setdefault("EDUAIQ_PUBLIC_BASE_URL", f"http://{stack.host}:{stack.port}")


def _refuse_taken(port: int, what: str) -> None:
    if port_open("127.0.0.1", port):
        raise SystemExit(
            f"eduaiq dev: port {port} for the embedded {what} is taken (is another `eduaiq dev` running?)"
        )


def _banner(stack: Stack, demo: bool, model_port: int, started: float) -> str:
    base = f"http://{stack.host}:{stack.port}"
    keys = []
    if demo:
        keys = ["sk-eduaiq-demo-alice-cs101 (alice, CS101)", "sk-eduaiq-demo-bob-cs101 (bob, CS101)",
                "sk-eduaiq-demo-rita-research (rita, research with an NSF grant)"]  # fmt: skip
    lines = [
        "",
        f"EduAiQ is running ({time.monotonic() - started:.1f} s)  state: {stack.state_dir}",
        f"  OpenAI-compatible API  {base}/v1",
        f"  Admin API              {base}/api/v1   (OpenAPI docs: {base}/api/docs)",
        f"  Dashboard              {base}/",
        f"  Demo model server      http://127.0.0.1:{model_port}/v1  (a demo stand-in, not a language model)",
        "  Sign in (dev)          "
        + f"{base}/auth/dev/login?user=cs-admin  (also it-admin, bursar, alice, ...)",
    ]
    if keys:
        lines += ["", "Demo API keys:"] + [f"  {k}" for k in keys]
        lines += [
            "",
            "Try it:",
            f"  curl -N {base}/v1/chat/completions -H 'Authorization: Bearer sk-eduaiq-demo-alice-cs101' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model":"demo-chat","stream":true,"messages":[{"role":"user","content":"Hello"}]}\'',
            "GPT4All: Settings > Add Model > Remote Providers > Custom provider:",
            f"  API base URL {base}/v1   API key sk-eduaiq-demo-alice-cs101   model demo-chat",
        ]
    lines += ["", f"Logs in {stack.log_dir}. Press Ctrl-C to stop everything.", ""]
    return "\n".join(lines)


def _demo_org(stack: Stack, model_port: int) -> Path:
    """The bundled demo institution, its provider pointed at this run's demo model server."""
    if model_port == DEMO_MODEL_PORT:
        return DEMO_ORG
    text = DEMO_ORG.read_text().replace(f"127.0.0.1:{DEMO_MODEL_PORT}/v1", f"127.0.0.1:{model_port}/v1")
    copy = stack.state_dir / "demo-university.yaml"
    copy.write_text(text)
    return copy


def _drain_usage(stack: Stack, timeout: float = 60) -> None:
    """After the web server has flushed its events, let the consumer write what the broker still holds
    before it and the broker stop: the quick start's broker keeps messages in memory only."""
    from core.settings import load_settings
    from usage.lag import wait_for_ledger

    try:
        if not wait_for_ledger(load_settings(), timeout):
            print(f"eduaiq dev: usage events still unwritten after {timeout:.0f} s", flush=True)
    except Exception as exc:  # broker unreachable: nothing more can be drained
        print(f"eduaiq dev: cannot check the usage backlog ({exc})", flush=True)


def run_dev(
    settings: Settings,
    state_dir: Path,
    org: Path | None,
    host: str,
    port: int,
    *,
    port_base: int | None = None,
    model_port: int = DEMO_MODEL_PORT,
) -> None:
    started = time.monotonic()
    state_dir = state_dir.expanduser().resolve()
    stack = Stack(settings, state_dir, host, port)
    stack.log_dir = state_dir / "logs"
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    org_file = org.resolve() if org else DEMO_ORG
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if port_open(host, port):
            raise SystemExit(f"eduaiq dev: {host}:{port} is already in use (pass --port)")
        try:
            _services(stack, port_base)
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise SystemExit(
                f"eduaiq dev: an embedded server failed to start: {exc} (logs in {stack.log_dir})"
            ) from None
        ensure_database(os.environ["EDUAIQ_DATABASE_URL"])
        # The demo model server (and a campus server a developer runs beside it) is on loopback: the quick
        # start allows that, and nothing else non-public, unless the environment says otherwise.
        os.environ.setdefault("EDUAIQ_UPSTREAM_ALLOWED_CIDRS", "127.0.0.0/8,::1/128")
        if org is None:
            org_file = _demo_org(stack, model_port)
        for step in (["cli", "migrate"], ["cli", "org", "import", str(org_file)]):
            done = subprocess.run([sys.executable, "-m", *step], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"eduaiq dev: `eduaiq {' '.join(step[1:])}` failed:\n{done.stderr.strip()}")
        stack.spawn("demo-model", ["selfhost.demo_model", "--host", "127.0.0.1", "--port", str(model_port)],
                    wait_port=model_port)  # fmt: skip
        stack.spawn("consumer", ["cli", "consume"])
        stack.spawn(
            "web", ["cli", "serve", "--host", host, "--port", str(port), "--dev-login"], wait_port=port
        )
        print(_banner(stack, org is None, model_port, started), flush=True)
        while not stop.wait(1.0):
            for child in stack.children:
                if child.proc.poll() is not None:
                    print(
                        f"eduaiq dev: {child.name} exited ({child.proc.returncode}); see {child.log}",
                        flush=True,
                    )
                    stop.set()
    finally:
        print("eduaiq dev: stopping...", flush=True)
        web = next((c for c in stack.children if c.name == "web"), None)
        if web is not None:
            web.stop(30)
            stack.children.remove(web)
            with contextlib.suppress(Exception):
                _drain_usage(stack)
        stack.stop()
        print("eduaiq dev: stopped", flush=True)
