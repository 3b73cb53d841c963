"""The chart sets exactly the settings the application reads, with values it accepts.

Names are checked against `core.settings.Settings` itself, so renaming a field
without updating the chart (or the reverse) fails here rather than in a cluster
where pydantic-settings would silently ignore the stale variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helm_chart import VALUE_SETS, Rendered, env_of, helm, imported_org, main_container, render_chart

from core.settings import Settings

SETTING_NAMES = {"EDUAIQ_" + field.upper() for field in Settings.model_fields}
REQUIRED = {"EDUAIQ_DATABASE_URL", "EDUAIQ_REDIS_URL", "EDUAIQ_KAFKA_BOOTSTRAP"}
APP_COMPONENTS = ["gateway", "admin-api", "consumer", "worker", "beat", "migrate", "org-import"]
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# What a Secret holding a whole URL contains; other Secrets get a URL-safe token.
URL_SECRETS = {
    "EDUAIQ_DATABASE_URL": "postgresql://app:from-secret@pg-rw.campus:5432/app",
    "EDUAIQ_REDIS_URL": "rediss://:from-secret@redis.campus:6380/2",
}


def app_container(rendered: Rendered, component: str) -> dict[str, Any]:
    return main_container(rendered.workload(component))


def kubelet_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet would hand the process.

    Secret references resolve to a stand-in value; `$(NAME)` expands only when
    NAME was defined earlier in the list, exactly the kubelet's rule, and any
    reference left unexpanded fails the test.
    """
    resolved: dict[str, str] = {}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            resolved[entry["name"]] = URL_SECRETS.get(entry["name"], f"stand-in-{ref['name']}-{ref['key']}")
            continue
        value = entry.get("value", "")
        for name in REFERENCE.findall(value):
            assert name in resolved, f"{entry['name']} refers to $({name}) before it is defined"
            value = value.replace(f"$({name})", resolved[name])
        resolved[entry["name"]] = value
    return resolved


@pytest.mark.parametrize("component", APP_COMPONENTS)
def test_every_eduaiq_variable_is_a_setting(rendered: Rendered, component: str) -> None:
    names = set(env_of(app_container(rendered, component)))
    unknown = {n for n in names if n.startswith("EDUAIQ_")} - SETTING_NAMES
    assert not unknown, f"{component} sets variables core.settings.Settings does not read: {sorted(unknown)}"


@pytest.mark.parametrize("component", APP_COMPONENTS)
def test_required_connections_are_set(rendered: Rendered, component: str) -> None:
    assert REQUIRED <= set(env_of(app_container(rendered, component)))


@pytest.mark.parametrize("component", APP_COMPONENTS)
def test_settings_load_from_the_rendered_environment(
    rendered: Rendered, component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application's own validators accept what the chart renders."""
    import os

    for name in list(os.environ):
        if name.startswith("EDUAIQ_"):
            monkeypatch.delenv(name)
    env = kubelet_env(app_container(rendered, component))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.database_url == env["EDUAIQ_DATABASE_URL"]
    assert settings.kafka_bootstrap == env["EDUAIQ_KAFKA_BOOTSTRAP"]


def test_database_url_is_composed_from_parts_and_the_password_secret() -> None:
    values = {
        "database": {"host": "pg.campus", "port": 6432, "name": "ledger", "user": "gw", "sslMode": "require"}
    }
    env = kubelet_env(app_container(render_chart(values), "gateway"))
    assert env["PGPASSWORD"] == "stand-in-eduaiq-postgresql-password"
    assert (
        env["EDUAIQ_DATABASE_URL"]
        == "postgresql://gw:stand-in-eduaiq-postgresql-password@pg.campus:6432/ledger"
    )
    # TLS goes through libpq's variable, which psycopg2 and asyncpg both read.
    assert env["PGSSLMODE"] == "require"
    without = render_chart({"database": {"passwordInUrl": False}})
    env = kubelet_env(app_container(without, "gateway"))
    assert env["EDUAIQ_DATABASE_URL"] == "postgresql://eduaiq@postgresql:5432/eduaiq"
    assert "PGPASSWORD" in env and "PGSSLMODE" not in env


def test_external_services_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render_chart(VALUE_SETS["external-services"])
    container = app_container(rendered, "consumer")
    entries = env_of(container)
    assert entries["EDUAIQ_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg-app", "key": "uri"}
    env = kubelet_env(container)
    assert env["EDUAIQ_REDIS_URL"] == "rediss://:stand-in-redis-auth-password@redis:6379/0"
    assert env["EDUAIQ_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["EDUAIQ_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["EDUAIQ_KAFKA_SASL_USERNAME"] == "eduaiq"
    assert entries["EDUAIQ_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "kafka-auth"
    # Tunables pass through as the application's field names, numbers unmangled.
    assert env["EDUAIQ_MAX_BODY_BYTES"] == "33554432"
    assert env["EDUAIQ_KEY_CACHE_SECONDS"] == "1.5"
    ca = env["SSL_CERT_FILE"]
    assert env["PGSSLROOTCERT"] == ca
    assert any(ca.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])


def test_settings_typos_are_caught_by_the_contract() -> None:
    """A misspelt tunable renders (the schema cannot know every field) but breaks the contract test."""
    container = app_container(render_chart({"settings": {"reservation_ttl_secs": 60}}), "gateway")
    unknown = {n for n in env_of(container) if n.startswith("EDUAIQ_")} - SETTING_NAMES
    assert unknown == {"EDUAIQ_RESERVATION_TTL_SECS"}


def test_state_and_spool_directories_are_writable_mounts(rendered: Rendered) -> None:
    for component in APP_COMPONENTS:
        container = app_container(rendered, component)
        env = kubelet_env(container)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        wanted = ["EDUAIQ_STATE_DIR"] + (["EDUAIQ_SPOOL_DIR"] if component == "gateway" else [])
        for name in wanted:
            mount = mounts.get(env[name])
            assert mount is not None and not mount.get("readOnly"), (
                f"{component}: {name} is not a writable mount"
            )
    spool = Path(kubelet_env(app_container(rendered, "gateway"))["EDUAIQ_SPOOL_DIR"])
    state = Path(kubelet_env(app_container(rendered, "gateway"))["EDUAIQ_STATE_DIR"])
    assert spool != state, "the spool must not share the scratch volume"


def test_every_provider_key_reaches_the_gateway_from_a_secret(rendered: Rendered) -> None:
    entries = env_of(app_container(rendered, "gateway"))
    providers = imported_org(rendered)["providers"]
    assert providers
    for provider in providers:
        if "api_key_env" not in provider:
            continue
        entry = entries.get(provider["api_key_env"])
        assert entry is not None, f"gateway lacks {provider['api_key_env']} for provider {provider['id']}"
        assert set(entry) == {"name", "valueFrom"}
        assert entry["valueFrom"]["secretKeyRef"]["name"]


def test_a_provider_key_without_a_secret_refuses_to_render() -> None:
    with pytest.raises(helm.HelmRenderError, match="OPENAI_API_KEY"):
        render_chart({"providerKeys": [{"env": "OTHER_KEY", "secretName": "s", "key": "k"}]})


def test_sso_secrets_reach_only_the_admin_api_from_secrets() -> None:
    rendered = render_chart(VALUE_SETS["external-services"])
    sso = imported_org(rendered)["sso"]
    names = {sso["saml"]["sp_private_key_env"], sso["oidc"]["client_secret_env"]}
    admin = env_of(main_container(rendered.workload("admin-api")))
    for name in names:
        assert admin[name]["valueFrom"]["secretKeyRef"]["name"] == "eduaiq-sso"
    for component in APP_COMPONENTS:
        if component != "admin-api":
            assert not names & set(env_of(main_container(rendered.workload(component)))), component


@pytest.mark.parametrize(
    ("sso", "named"),
    [
        ({"saml": {"sp_private_key_env": "SP_KEY"}}, "sso.saml.sp_private_key_env names SP_KEY"),
        ({"oidc": {"client_secret_env": "OIDC_SECRET"}}, "sso.oidc.client_secret_env names OIDC_SECRET"),
    ],
)
def test_an_sso_secret_without_a_secret_refuses_to_render(sso: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(named)):
        render_chart({"org": {"file": {"sso": sso}}})


@pytest.mark.parametrize(
    "sso", ["sso:\n", "sso: {saml: null, cas: {server_url: 'https://cas.example.edu/cas/'}}\n"]
)
def test_institutions_without_sso_secrets_render(sso: str) -> None:
    content = (
        "institution: {id: u, name: U, currency: USD, timezone: UTC}\nunits: [{id: u, kind: university}]\n"
        + sso
    )
    rendered = render_chart({"org": {"content": content}})
    assert imported_org(rendered)["institution"]["id"] == "u"


def test_required_connection_values_refuse_to_render() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"kafka\.bootstrap is required"):
        render_chart({"kafka": {"bootstrap": ""}})
    with pytest.raises(helm.HelmRenderError, match="publicBaseUrl is required"):
        render_chart({"ingress": {"enabled": False}})


def test_public_base_url_follows_the_ingress() -> None:
    env = kubelet_env(app_container(render_chart({"ingress": {"host": "llm.stateu.edu"}}), "admin-api"))
    assert env["EDUAIQ_PUBLIC_BASE_URL"] == "https://llm.stateu.edu"
    explicit = render_chart({"publicBaseUrl": "https://ai.stateu.edu/", "ingress": {"enabled": False}})
    assert (
        kubelet_env(app_container(explicit, "admin-api"))["EDUAIQ_PUBLIC_BASE_URL"] == "https://ai.stateu.edu"
    )
