"""The chart declares the SSO secrets it maps (ssoKeys) in EDUAIQ_SSO_SECRET_VARS, for every component that
parses the institution file's `sso:` section (the org import and the admin API refuse any other name), with
an entry's `institution` and `host` as for providerKeys; the setting itself is not the operator's to set
through `settings:`, so the two cannot disagree."""

from __future__ import annotations

import pytest
from helm_chart import VALUE_SETS, env_of, helm, imported_org, main_container, render_chart

from admin_api.sso import parse_sso_section
from core.declared import parse_secret_vars


def test_the_chart_declares_its_sso_keys_and_the_import_accepts_them() -> None:
    rendered = render_chart(VALUE_SETS["external-services"])
    org = imported_org(rendered)
    for component in ("admin-api", "org-import"):
        env = env_of(main_container(rendered.workload(component)))
        value = env["EDUAIQ_SSO_SECRET_VARS"]["value"]
        assert set(value.split(",")) == {"STATEU_SAML_SP_KEY", "STATEU_OIDC_SECRET"}, component
        cfg = parse_sso_section(org["institution"]["id"], org["sso"], parse_secret_vars(value))
        assert cfg.oidc is not None and cfg.saml is not None


def test_sso_keys_can_be_scoped_to_an_institution_and_a_host() -> None:
    keys = [
        {"env": "STATEU_OIDC_SECRET", "secretName": "s", "key": "a", "institution": "stateu",
         "host": "login.stateu.edu"},
        {"env": "TECH_SP_KEY", "secretName": "s", "key": "b", "institution": "tech"},
    ]  # fmt: skip
    env = env_of(main_container(render_chart({"ssoKeys": keys}).workload("admin-api")))
    assert set(env["EDUAIQ_SSO_SECRET_VARS"]["value"].split(",")) == {
        "stateu:STATEU_OIDC_SECRET@login.stateu.edu",
        "tech:TECH_SP_KEY",
    }
    assert (
        env_of(main_container(render_chart({}).workload("admin-api")))["EDUAIQ_SSO_SECRET_VARS"]["value"]
        == ""
    )


def test_the_setting_is_the_charts() -> None:
    with pytest.raises(helm.HelmRenderError, match="set by the chart"):
        render_chart({"settings": {"sso_secret_vars": "PGPASSWORD"}})
