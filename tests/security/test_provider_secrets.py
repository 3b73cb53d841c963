"""Issue 17 item 1: an institution admin (or a personal access token with org:write) cannot make the
gateway read a secret that is not a provider key, nor aim one at an address the operator did not allow.

The attack, as the review ran it: a provider with `api_key_env: PGPASSWORD` (or EDUAIQ_SESSION_SECRET)
and `base_url` pointing at a capture server; the gateway sent the value as a bearer token on every
request and on its background health probe. Each entry is checked: the admin API, the institution
file, the gateway's compiled view, and the upstream pool's connect.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis import Redis
from sqlalchemy import update
from sqlmodel import select

from admin_api.orgfile import export_org
from core.channels import CATALOG_CHANNEL
from core.db import make_async_engine, session_factory
from core.models import AuditEntry, ModelOffer, Provider
from core.settings import Settings
from providers.http import UpstreamConnectionError, UpstreamPool
from providers.upstream_policy import UpstreamPolicy
from tests.admin_api.conftest import BASE_URL, Env, drop_env, make_env
from tests.gateway.harness import Stack, gateway_stack, org_doc
from tests.security.upstream_double import Capture, capture_server

PG_SECRET = "pg-s3cret-do-not-leak-4711"
SESSION_SECRET = "session-s3cret-do-not-leak-0815"


def strict_settings(pg_url: str, redis_url: str) -> Settings:
    """An operator who declared two provider key variables and allows non-public upstreams only at
    127.0.0.1 literally (where the test institution's campus server is): nothing else non-public."""
    return Settings(database_url=pg_url, redis_url=redis_url, public_base_url=BASE_URL,
                    provider_secret_vars="OPENAI_API_KEY,CAMPUS_VLLM_KEY", upstream_allowed_cidrs="",
                    upstream_allowed_hosts="127.0.0.1")  # fmt: skip


@pytest.fixture
async def strict_env(pg_url: str, redis_url: str) -> AsyncIterator[Env]:
    env = await make_env(strict_settings(pg_url, redis_url))
    try:
        yield env
    finally:
        await drop_env(env)


async def _put(client: httpx.AsyncClient, provider_id: str, body: dict[str, Any]) -> httpx.Response:
    return await client.put(f"/api/v1/providers/{provider_id}", json=body)


async def _provider_ids(env: Env) -> set[str]:
    client = await env.login("uadmin")
    return {p["id"] for p in (await client.get("/api/v1/providers")).json()}


@pytest.mark.parametrize("variable", ["PGPASSWORD", "EDUAIQ_SESSION_SECRET", "EDUAIQ_DATABASE_URL", "HOME"])
@pytest.mark.parametrize("who", ["admin", "token"])
async def test_admin_api_refuses_secret_variables_the_operator_did_not_declare(
    strict_env: Env, variable: str, who: str
) -> None:
    client = (
        await strict_env.login("uadmin")
        if who == "admin"
        else await strict_env.token_client("uadmin", ["org:read", "org:write"])
    )
    response = await _put(client, "capture", {"type": "openai", "base_url": "https://capture.example.com/v1",
                                              "api_key_env": variable})  # fmt: skip
    assert response.status_code == 422, response.text
    problems = response.json()["error"]["details"]["problems"]
    assert any(p["path"].endswith("api_key_env") and variable in p["message"] for p in problems), problems
    assert "capture" not in await _provider_ids(strict_env)
    # The control: a declared variable is accepted.
    ok = await _put(client, "capture", {"type": "openai", "base_url": "https://capture.example.com/v1",
                                        "api_key_env": "OPENAI_API_KEY"})  # fmt: skip
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",  # the cloud metadata service (link-local)
        "http://[fe80::1]/v1",  # IPv6 link-local
        "http://[fd00:ec2::254]/v1",  # IPv6 ULA (AWS's IPv6 metadata address)
        "http://[::ffff:169.254.169.254]/v1",  # IPv4-mapped IPv6
        "http://10.1.2.3:5432/v1",  # RFC 1918: the database's port
        "http://192.168.0.10/v1",
        "http://127.0.0.2:6379/v1",  # loopback other than the allowed literal
        "http://[::1]:8000/v1",
        "http://localhost:8000/v1",
    ],
)
async def test_admin_api_refuses_internal_upstream_addresses(strict_env: Env, url: str) -> None:
    client = await strict_env.login("uadmin")
    for field_name, body in (
        ("base_url", {"type": "vllm", "base_url": url}),
        ("replicas[0]", {"type": "vllm", "base_url": "https://gpu.example.com/v1", "replicas": [url]}),
        ("metrics_url", {"type": "vllm", "base_url": "https://gpu.example.com/v1", "metrics_url": url}),
    ):
        response = await _put(client, "internal", body)
        assert response.status_code == 422, (field_name, response.text)
        problems = response.json()["error"]["details"]["problems"]
        assert any(p["path"].endswith(field_name) for p in problems), problems
    assert "internal" not in await _provider_ids(strict_env)


async def test_a_host_name_no_resolver_accepts_is_a_problem_not_a_500(strict_env: Env) -> None:
    client = await strict_env.login("uadmin")
    response = await _put(client, "odd", {"type": "vllm", "base_url": "http://a..b/v1"})
    assert response.status_code == 422, response.text


async def test_credential_headers_come_only_from_declared_variables(strict_env: Env) -> None:
    client = await strict_env.login("uadmin")
    base = {"type": "openai", "base_url": "https://capture.example.com/v1", "api_key_env": "OPENAI_API_KEY"}
    literal = await _put(client, "hdr", {**base, "headers": {"Authorization": "Bearer sk-literal-123456"}})
    assert literal.status_code == 422, literal.text
    undeclared = await _put(client, "hdr", {**base, "headers": {"X-Api-Key": "env:PGPASSWORD"}})
    assert undeclared.status_code == 422, undeclared.text
    declared = await _put(client, "hdr", {**base, "headers": {"X-Api-Key": "env:OPENAI_API_KEY",
                                                               "OpenAI-Organization": "org-stateu"}})  # fmt: skip
    assert declared.status_code == 200, declared.text
    assert declared.json()["options"]["headers"] == {
        "X-Api-Key": "env:OPENAI_API_KEY",
        "OpenAI-Organization": "org-stateu",
    }


async def test_literal_credential_headers_stored_earlier_are_redacted_when_read_back(strict_env: Env) -> None:
    """A row written before the rule (or by hand) keeps its literal header in the database; no reader of
    the admin API, the export or the audit log sees it."""
    secret = "Bearer sk-legacy-s3cret-99887766"
    async with strict_env.db() as session, session.begin():
        await session.execute(
            update(Provider)
            .where(Provider.institution_id == strict_env.inst, Provider.id == "openai")  # type: ignore[arg-type]
            .values(options={"headers": {"Authorization": secret, "OpenAI-Organization": "org-1"}})
        )
    client = await strict_env.login("uadmin")
    listed = (await client.get("/api/v1/providers")).json()
    openai = next(p for p in listed if p["id"] == "openai")
    assert openai["options"]["headers"] == {"Authorization": "[redacted]", "OpenAI-Organization": "org-1"}
    assert "s3cret" not in (await client.get("/api/v1/providers")).text
    async with strict_env.db() as session:
        exported = await export_org(session, strict_env.inst)
    assert "s3cret" not in yaml.safe_dump(exported)
    # A change to the provider audits its before/after: neither carries the literal.
    changed = await _put(client, "openai", {"type": "openai", "api_key_env": "OPENAI_API_KEY",
                                            "headers": {"X-Api-Key": "env:OPENAI_API_KEY"}})  # fmt: skip
    assert changed.status_code == 200, changed.text
    async with strict_env.db() as session:
        entries = (
            (await session.execute(select(AuditEntry).where(AuditEntry.institution_id == strict_env.inst)))
            .scalars()
            .all()
        )
    assert any(e.action == "provider.update" for e in entries)
    assert all("s3cret" not in f"{e.before} {e.after}" for e in entries)


def _import(env: dict[str, str], doc: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "org.yaml"
    path.write_text(yaml.safe_dump(doc))
    return subprocess.run([sys.executable, "-m", "cli", "org", "import", str(path)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_institution_file_import_refuses_the_same(fresh_pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "EDUAIQ_DATABASE_URL": fresh_pg_url, "EDUAIQ_REDIS_URL": redis_url,
           "EDUAIQ_PROVIDER_SECRET_VARS": "OPENAI_API_KEY", "EDUAIQ_UPSTREAM_ALLOWED_CIDRS": "",
           "EDUAIQ_UPSTREAM_ALLOWED_HOSTS": "127.0.0.1"}  # fmt: skip

    def with_provider(entry: dict[str, Any]) -> dict[str, Any]:
        doc = org_doc("imp" + str(time.monotonic_ns())[-8:], "http://127.0.0.1:8001/v1")
        doc["providers"].append({**entry, "models": [{"id": "x-chat", "upstream": "x",
                                 "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]})  # fmt: skip
        return doc

    for entry, path in (
        ({"id": "e1", "type": "openai-compatible", "base_url": "https://c.example.com/v1",
          "api_key_env": "PGPASSWORD"}, "providers[1].api_key_env"),
        ({"id": "e2", "type": "openai-compatible", "base_url": "http://169.254.169.254/v1"},
         "providers[1].base_url"),
        ({"id": "e3", "type": "openai-compatible", "base_url": "https://c.example.com/v1",
          "headers": {"Authorization": "Bearer literal-secret"}}, "providers[1].headers.Authorization"),
    ):  # fmt: skip
        done = _import(env, with_provider(entry), tmp_path)
        assert done.returncode != 0, (entry, done.stdout)
        assert path in done.stderr + done.stdout, done.stderr
    ok = _import(env, with_provider({"id": "e4", "type": "openai-compatible", "base_url": "https://c.example.com/v1",
                                     "api_key_env": "OPENAI_API_KEY"}), tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_settings_refuse_declaring_the_gateways_own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import SettingsError, load_settings

    for value in ("PGPASSWORD", "EDUAIQ_SESSION_SECRET", "EDUAIQ_*", "P*", "REDIS_PASSWORD", "KAFKA_*"):
        monkeypatch.setenv("EDUAIQ_PROVIDER_SECRET_VARS", value)
        with pytest.raises(SettingsError, match="EDUAIQ_PROVIDER_SECRET_VARS"):
            load_settings()


# -- the gateway itself: what is already in the database is never read or sent -------------------------


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    with capture_server() as c:
        yield c


@pytest.fixture(scope="module")
def stack(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(
        pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("secrets"),
        extra_env={"PGPASSWORD": PG_SECRET, "EDUAIQ_SESSION_SECRET": SESSION_SECRET,
                   "EDUAIQ_PROVIDER_SECRET_VARS": "OPENAI_API_KEY"},
    ) as s:  # fmt: skip
        yield s


async def _plant(stack: Stack, rows: list[Any]) -> None:
    """Rows as a compromised admin API or an old import would have left them, then the reload signal."""
    engine = make_async_engine(stack.db_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            for row in rows:  # providers before the offers that reference them
                session.add(row)
                await session.flush()
    finally:
        await engine.dispose()
    Redis.from_url(stack.env["EDUAIQ_REDIS_URL"]).publish(CATALOG_CHANNEL, stack.institution)


def _offer(inst: str, provider: str) -> ModelOffer:
    # The same model id the students use, tried first: the gateway would send their requests here.
    return ModelOffer(institution_id=inst, provider_id=provider, id="demo-chat", upstream="demo-chat",
                      input_price=1, output_price=1, position=-10)  # fmt: skip


async def test_gateway_never_reads_or_sends_undeclared_variables(stack: Stack, capture: Capture) -> None:
    inst = stack.institution
    await _plant(
        stack,
        [
            Provider(institution_id=inst, id="evil-pg", type="openai-compatible", base_url=capture.url,
                     api_key_env="PGPASSWORD", position=-2, options={"health_check": True}),
            Provider(institution_id=inst, id="evil-hdr", type="vllm", base_url=capture.url + "/x",
                     position=-1, options={"headers": {"X-Api-Key": "env:EDUAIQ_SESSION_SECRET"}}),
            _offer(inst, "evil-pg"),
            _offer(inst, "evil-hdr"),
        ],
    )  # fmt: skip
    log = next(p for p in stack.logs if p.name.startswith("gateway"))
    for _ in range(300):  # the reload is asynchronous; on code without the policy the line never comes
        if "evil-hdr" in log.read_text():
            break
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
        for _ in range(3):
            r = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {stack.key('alice')}"},
                                  json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            assert r.status_code == 200, r.text  # served by the declared provider, the demo server
    await asyncio.sleep(4)  # the health probe runs every 1.5 s: give it time to have run, were it going to
    received = capture.everything_received()
    assert PG_SECRET not in received and SESSION_SECRET not in received
    assert capture.requests == []
    text = log.read_text()
    assert "provider evil-pg disabled" in text and "PGPASSWORD" in text
    assert "provider evil-hdr disabled" in text and "EDUAIQ_SESSION_SECRET" in text


async def test_pool_refuses_names_that_resolve_to_addresses_not_allowed(capture: Capture) -> None:
    """`localhost` (a name, so no compile-time check can see it) resolves to loopback: refused at
    connect, before a byte is sent; allowed when the operator says so."""
    before = len(capture.requests)
    strict = UpstreamPool(policy=UpstreamPolicy())
    try:
        with pytest.raises(UpstreamConnectionError, match="not allowed"):
            await strict.request("GET", f"http://localhost:{capture.port}/v1/models",
                                 [("Authorization", "Bearer " + PG_SECRET)])  # fmt: skip
    finally:
        await strict.close()
    assert len(capture.requests) == before
    allowed = UpstreamPool(policy=UpstreamPolicy(allowed_hosts=frozenset({"localhost"})))
    try:
        response = await allowed.request("GET", f"http://localhost:{capture.port}/v1/models")
        assert response.status == 200
        response.close()
    finally:
        await allowed.close()
    assert len(capture.requests) == before + 1
