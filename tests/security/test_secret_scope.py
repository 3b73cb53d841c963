"""Declared provider secrets belong to one institution and go to the hosts they are declared for.

The attack: the operator of a gateway serving two institutions declares both institutions' keys (and
the campus vLLM key) for providers. The admin of institution A configures a provider with
`api_key_env` naming institution B's key and `base_url` on any public host; the gateway sends B's key
there, on requests and on its background health probe. The same with a key the operator meant only
for api.openai.com. And the health probe sent the key to a `metrics_url` on any host at all.

Each place a provider is accepted is attacked: the admin API, the institution file, the gateway's
own load of what is stored; and the probe itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from admin_api.app import create_app
from admin_api.orgfile import OrgFileError, parse_document
from core.models import ModelOffer, Provider
from core.settings import Settings
from gateway.catalog import load_institution
from providers.config import compile_deployments
from providers.router import Router
from providers.upstream_policy import UpstreamPolicy
from quota.sources import load_spec
from tests.admin_api.conftest import BASE_URL, Env, drop_env, import_institution, stateu_document
from tests.security.upstream_double import capture_server

OTHER = "other-college"  # institution B: its id only matters as the scope of its key


def declared(inst: str) -> str:
    """A's keys: the campus vLLM key (any host), OpenAI's (bound to api.openai.com), one for its
    own gateway service; B's key; nothing unscoped."""
    return ",".join([f"{inst}:CAMPUS_VLLM_KEY", f"{inst}:OPENAI_API_KEY@api.openai.com",
                     f"{inst}:A_SERVICE_KEY", f"{OTHER}:B_SECRET_KEY", f"{OTHER}:B_*"])  # fmt: skip


@pytest.fixture
async def env_a(pg_url: str, redis_url: str) -> AsyncIterator[Env]:
    inst = f"su{uuid.uuid4().hex[:10]}"
    settings = Settings(database_url=pg_url, redis_url=redis_url, public_base_url=BASE_URL,
                        provider_secret_vars=declared(inst), upstream_allowed_cidrs="",
                        upstream_allowed_hosts="127.0.0.1")  # fmt: skip
    env = Env(create_app(settings, dev_login=True), inst)
    await import_institution(env.db, inst)
    async with env.db() as session:
        await env.state.quota.compile(await load_spec(session, inst))
    try:
        yield env
    finally:
        await drop_env(env)


async def _put(env: Env, provider_id: str, body: dict[str, Any]) -> httpx.Response:
    client = await env.login("uadmin")
    return await client.put(f"/api/v1/providers/{provider_id}", json=body)


def _problems(response: httpx.Response) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = response.json()["error"]["details"]["problems"]
    return problems


@pytest.mark.parametrize("variable", ["B_SECRET_KEY", "B_OTHER_TOKEN"])
async def test_admin_of_one_institution_cannot_name_anothers_key(env_a: Env, variable: str) -> None:
    response = await _put(env_a, "grab", {"type": "openai-compatible", "base_url": "https://capture.example.com/v1",
                                          "api_key_env": variable})  # fmt: skip
    assert response.status_code == 422, response.text
    problem = next(p for p in _problems(response) if p["path"].endswith("api_key_env"))
    # The message names the setting and the entry the operator would have to add.
    assert "EDUAIQ_PROVIDER_SECRET_VARS" in problem["message"], problem
    assert f"{env_a.inst}:{variable}" in problem["message"], problem
    # In a header too.
    header = await _put(env_a, "grab", {"type": "openai-compatible", "base_url": "https://capture.example.com/v1",
                                        "api_key_env": "A_SERVICE_KEY",
                                        "headers": {"X-Api-Key": f"env:{variable}"}})  # fmt: skip
    assert header.status_code == 422, header.text
    assert any(p["path"].endswith("headers.X-Api-Key") for p in _problems(header)), header.text
    # The control: A's own key is accepted.
    ok = await _put(env_a, "grab", {"type": "openai-compatible", "base_url": "https://capture.example.com/v1",
                                    "api_key_env": "A_SERVICE_KEY"})  # fmt: skip
    assert ok.status_code == 200, ok.text


async def test_a_key_bound_to_a_host_is_not_sent_to_another(env_a: Env) -> None:
    for body, field_name in (
        ({"type": "openai", "base_url": "https://capture.example.com/v1", "api_key_env": "OPENAI_API_KEY"},
         "api_key_env"),
        ({"type": "openai", "replicas": ["https://capture.example.com/v1"], "api_key_env": "OPENAI_API_KEY"},
         "api_key_env"),
        ({"type": "openai-compatible", "base_url": "https://capture.example.com/v1", "api_key_env": "A_SERVICE_KEY",
          "headers": {"X-Api-Key": "env:OPENAI_API_KEY"}}, "headers.X-Api-Key"),
    ):  # fmt: skip
        response = await _put(env_a, "elsewhere", body)
        assert response.status_code == 422, (body, response.text)
        problem = next(p for p in _problems(response) if p["path"].endswith(field_name))
        assert "api.openai.com" in problem["message"] and "capture.example.com" in problem["message"], problem
        assert "EDUAIQ_PROVIDER_SECRET_VARS" in problem["message"], problem
    # The control: to its own host (the type's default base URL) it goes.
    ok = await _put(env_a, "elsewhere", {"type": "openai", "api_key_env": "OPENAI_API_KEY"})
    assert ok.status_code == 200, ok.text


def test_the_institution_file_of_one_institution_cannot_name_anothers_key() -> None:
    inst = f"su{uuid.uuid4().hex[:10]}"
    policy = UpstreamPolicy.from_settings(
        Settings(provider_secret_vars=declared(inst), upstream_allowed_hosts="127.0.0.1")
    )
    doc = stateu_document(inst)
    parse_document(doc, policy)  # as it is, the file is fine
    price = {"input_per_mtok": 1, "output_per_mtok": 1}
    for entry, field_name, needle in (
        ({"api_key_env": "B_SECRET_KEY", "base_url": "https://c.example.com/v1"}, "api_key_env",
         f"{inst}:B_SECRET_KEY"),
        ({"api_key_env": "OPENAI_API_KEY", "base_url": "https://c.example.com/v1"}, "api_key_env",
         "api.openai.com"),
    ):  # fmt: skip
        bad = stateu_document(inst)
        bad["providers"].append({"id": "grab", "type": "openai-compatible", **entry,
                                 "models": [{"id": "grab-chat", "price": price}]})  # fmt: skip
        with pytest.raises(OrgFileError) as caught:
            parse_document(bad, policy)
        paths = {path: message for path, message in caught.value.problems}
        where = f"providers[{len(bad['providers']) - 1}].{field_name}"
        assert where in paths and needle in paths[where], caught.value.problems
        assert "EDUAIQ_PROVIDER_SECRET_VARS" in paths[where]


async def test_gateway_load_disables_a_provider_naming_another_institutions_key(env_a: Env) -> None:
    """Rows as an older admin API or a hand edit left them: at load, the gateway reads only what is
    declared for the institution it is loading (its own keys work, another's never)."""
    inst = env_a.inst
    async with env_a.db() as session, session.begin():
        for pid, var in (("grab", "B_SECRET_KEY"), ("own", "A_SERVICE_KEY")):
            session.add(Provider(institution_id=inst, id=pid, type="openai-compatible",
                                 base_url=f"https://{pid}.example.com/v1", api_key_env=var, position=10))  # fmt: skip
            await session.flush()
            session.add(ModelOffer(institution_id=inst, provider_id=pid, id=f"{pid}-chat", upstream="x",
                                   input_price=1, output_price=1, position=10))  # fmt: skip
    policy = UpstreamPolicy.from_settings(env_a.state.settings)
    async with env_a.db() as session:
        view = await load_institution(session, inst, None, policy)
    assert view is not None
    disabled = {d.cfg.provider_id: d.cfg.disabled for d in view.router._deployments.values()}
    assert disabled["grab"] is not None and f"{inst}:B_SECRET_KEY" in disabled["grab"], disabled
    assert disabled["own"] is None, disabled  # A's own declared key: loaded as A's
    assert disabled["openai"] is None and disabled["campus-vllm"] is None, disabled


async def test_health_probe_never_sends_the_key_to_a_metrics_host_other_than_the_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "probe-s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv("TEST_PROBE_KEY", secret)
    with capture_server() as capture:
        # The same double behind two names: the model server at `localhost`, the metrics URL at 127.0.0.1
        # (another host as far as the URL says, which is all an admin controls).
        deployments = compile_deployments(
            [{"id": "gpu", "type": "vllm", "base_url": f"http://localhost:{capture.port}/v1",
              "metrics_url": f"http://127.0.0.1:{capture.port}/metrics", "api_key_env": "TEST_PROBE_KEY",
              "models": [{"id": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]},
             {"id": "same", "type": "vllm", "base_url": f"http://127.0.0.1:{capture.port}/v1",
              "api_key_env": "TEST_PROBE_KEY",
              "models": [{"id": "n", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}]
        )  # fmt: skip
        router = Router(deployments)
        await router.start()  # probes every server once before it returns
        await router.close()
    assert [r.path for r in capture.requests] == ["/metrics", "/metrics"], capture.requests
    by_auth = sorted(r.headers.get("Authorization", "") for r in capture.requests)
    # The foreign metrics host got no key; the model server's own /metrics (the control) did.
    assert by_auth == ["", f"Bearer {secret}"], by_auth


async def test_a_key_bound_to_a_host_goes_there_over_https_only(env_a: Env) -> None:
    """Found by the attack review: the binding named a host, not a scheme, so `http://api.openai.com`
    passed and the key would cross the campus network in clear text."""
    response = await _put(env_a, "cleartext", {"type": "openai", "base_url": "http://api.openai.com/v1",
                                               "api_key_env": "OPENAI_API_KEY"})  # fmt: skip
    assert response.status_code == 422, response.text
    problem = next(p for p in _problems(response) if p["path"].endswith("api_key_env"))
    assert "https" in problem["message"], problem
    # The health probe sends the key to a metrics URL on the same host: over http it is refused too.
    probe = await _put(env_a, "cleartext", {"type": "openai", "base_url": "https://api.openai.com/v1",
                                            "metrics_url": "http://api.openai.com:9090/metrics",
                                            "api_key_env": "OPENAI_API_KEY"})  # fmt: skip
    assert probe.status_code == 422, probe.text
    ok = await _put(env_a, "cleartext", {"type": "openai", "base_url": "https://api.openai.com/v1",
                                         "api_key_env": "OPENAI_API_KEY"})  # fmt: skip
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("field_name", ["base_url", "metrics_url"])
async def test_a_url_may_not_carry_a_password(env_a: Env, field_name: str) -> None:
    """`https://user:secret@host/` was stored and shown to every catalogue reader (and sent unchecked)."""
    body = {"type": "openai-compatible", "base_url": "https://models.example.com/v1",
            field_name: "https://svc:hunter2@models.example.com/v1"}  # fmt: skip
    response = await _put(env_a, "userinfo", body)
    assert response.status_code == 422, response.text
    listed = await (await env_a.login("uadmin")).get("/api/v1/providers")
    assert "hunter2" not in listed.text


async def test_a_stored_provider_the_checks_now_refuse_is_left_out_and_the_rest_still_load(
    env_a: Env,
) -> None:
    """Found by the attack review: a row stored before a check existed (here a header value that is not
    ASCII, a URL with a password, a timeout past its bound) made the gateway's load raise, so after an
    upgrade every gateway of every institution crash-looped. Now that provider alone is left out."""
    inst = env_a.inst
    bad = {"legacy-hdr": ({"headers": {"X-Title": "Université de l'État"}}, "https://h.example.com/v1"),
           "legacy-url": ({}, "https://svc:pw@u.example.com/v1"),
           "legacy-timeout": ({"timeouts": {"first_byte": 100000}}, "https://t.example.com/v1")}  # fmt: skip
    async with env_a.db() as session, session.begin():
        for n, (pid, (options, url)) in enumerate(bad.items()):
            session.add(Provider(institution_id=inst, id=pid, type="openai-compatible", base_url=url,
                                 options=options, position=20 + n))  # fmt: skip
            await session.flush()
            session.add(ModelOffer(institution_id=inst, provider_id=pid, id=f"{pid}-chat", upstream="x",
                                   input_price=1, output_price=1, position=20 + n))  # fmt: skip
    async with env_a.db() as session:
        view = await load_institution(session, inst, None, UpstreamPolicy.from_settings(env_a.state.settings))
    assert view is not None
    loaded = {d.cfg.provider_id for d in view.router._deployments.values()}
    assert not loaded & set(bad), loaded
    assert {"openai", "campus-vllm"} <= loaded, loaded
