"""Issue 17 item 12: `/auth/dev/login` (sign in as anyone, no password) answers only on loopback, and not
through a reverse proxy (behind one on the same host, every request arrives from loopback).

`eduaiq serve --dev-login --host 0.0.0.0` (what `eduaiq dev --host 0.0.0.0` runs) is started as a real
process; the development login must not answer a request that reaches it through the machine's network
address, while a browser on the machine itself (127.0.0.1) still signs in. In-process, a request from a
non-loopback peer is refused whatever the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin_api.app import create_app
from cli.services.process import free_port, port_open
from core.db import make_async_engine, session_factory
from core.settings import Settings
from tests.admin_api.conftest import import_institution


def network_address() -> str | None:
    """An address of this machine that is not loopback (the one a default route would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def imported(pg_url: str) -> str:
    inst = f"dl{uuid.uuid4().hex[:10]}"

    async def run() -> None:
        engine = make_async_engine(pg_url, pool_size=1)
        try:
            await import_institution(session_factory(engine), inst)
        finally:
            await engine.dispose()

    asyncio.run(run())
    return inst


@pytest.fixture
def served(pg_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    inst = imported(pg_url)
    port = free_port()
    env = {**os.environ, "EDUAIQ_DATABASE_URL": pg_url, "EDUAIQ_REDIS_URL": redis_url,
           "EDUAIQ_KAFKA_BOOTSTRAP": kafka_bootstrap, "EDUAIQ_STATE_DIR": str(tmp_path),
           "EDUAIQ_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    env.pop("EDUAIQ_SESSION_SECRET", None)
    log = (tmp_path / "serve.log").open("wb")
    child = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "0.0.0.0", "--port", str(port),
                              "--dev-login"], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not port_open("127.0.0.1", port):
            assert child.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "eduaiq serve did not start"
            time.sleep(0.2)
        yield port, inst
    finally:
        child.terminate()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def test_dev_login_is_not_offered_to_the_network(served: tuple[int, str]) -> None:
    port, inst = served
    params = {"user": "uadmin", "institution": inst}
    # A reverse proxy on the same machine (nginx in front of `eduaiq dev`) connects from loopback for
    # every client it serves; the header it adds is what gives it away.
    proxied = httpx.get(f"http://127.0.0.1:{port}/auth/dev/login", params=params, timeout=60,
                        headers={"X-Forwarded-For": "198.51.100.7"})  # fmt: skip
    assert proxied.status_code == 404, proxied.text
    assert "eduaiq_session" not in proxied.cookies
    local = httpx.get(f"http://127.0.0.1:{port}/auth/dev/login", params=params, timeout=60)
    assert local.status_code == 303, local.text
    assert "eduaiq_session" in local.cookies
    address = network_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    remote = httpx.get(f"http://{address}:{port}/auth/dev/login", params=params, timeout=60)
    assert remote.status_code == 404, remote.text
    assert "eduaiq_session" not in remote.cookies


async def test_dev_login_refuses_a_peer_that_is_not_loopback(pg_url: str, redis_url: str) -> None:
    inst = await asyncio.to_thread(imported, pg_url)
    app = create_app(Settings(database_url=pg_url, redis_url=redis_url), dev_login=True)
    params = {"user": "uadmin", "institution": inst}
    try:
        for peer, status in ((("192.0.2.50", 40000), 404), (("::ffff:10.1.2.3", 40000), 404),
                             (("127.0.0.1", 40000), 303), (("::1", 40000), 303)):  # fmt: skip
            transport = httpx.ASGITransport(app=app, client=peer)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
                answer = await client.get("/auth/dev/login", params=params)
            assert answer.status_code == status, f"{peer}: {answer.text}"
    finally:
        await app.state.eduaiq_admin.close()


# What reverse proxies add (nginx, Apache, HAProxy, Caddy, Traefik, Envoy, Cloudflare, Fastly, ...).
PROXY_HEADERS = {
    "Forwarded": "for=198.51.100.7;proto=https",
    "X-Forwarded-For": "198.51.100.7",
    "X-Forwarded-Host": "eduaiq.example.edu",
    "X-Forwarded-Proto": "https",
    "X-Real-IP": "198.51.100.7",
    "Via": "1.1 nginx",
    "True-Client-IP": "198.51.100.7",
    "CF-Connecting-IP": "198.51.100.7",
}


@pytest.mark.parametrize("header", sorted(PROXY_HEADERS))
async def test_dev_login_refuses_a_loopback_peer_behind_a_proxy(
    pg_url: str, redis_url: str, header: str
) -> None:
    inst = await asyncio.to_thread(imported, pg_url)
    app = create_app(Settings(database_url=pg_url, redis_url=redis_url), dev_login=True)
    params = {"user": "uadmin", "institution": inst}
    try:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            proxied = await client.get(
                "/auth/dev/login", params=params, headers={header: PROXY_HEADERS[header]}
            )
            assert proxied.status_code == 404, proxied.text
            assert proxied.json()["error"]["code"] == "dev_login_disabled"
            assert "eduaiq_session" not in proxied.cookies
            direct = await client.get("/auth/dev/login", params=params)  # the control: no proxy header
            assert direct.status_code == 303, direct.text
    finally:
        await app.state.eduaiq_admin.close()
