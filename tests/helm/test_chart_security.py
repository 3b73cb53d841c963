"""Every pod runs unprivileged on a read-only root, and no secret is ever written into a manifest."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from helm_chart import Rendered, containers, env_of, pod_template, render_chart

SECRET_LOOKING = re.compile(r"(KEY|PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIALS?)$", re.IGNORECASE)
URL_SETTINGS = {"EDUAIQ_DATABASE_URL", "EDUAIQ_REDIS_URL"}


def effective(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    """A security field as the kubelet applies it: the container's own value wins over the pod's."""
    own = container.get("securityContext", {})
    return own[field] if field in own else pod["spec"].get("securityContext", {}).get(field)


def all_containers(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = [
        (workload["metadata"]["name"], pod_template(workload), container)
        for workload in rendered.workloads()
        for container in containers(workload)
    ]
    assert found
    return found


def test_every_container_runs_as_non_root(rendered: Rendered) -> None:
    for name, pod, container in all_containers(rendered):
        assert effective(pod, container, "runAsNonRoot") is True, name
        assert (effective(pod, container, "runAsUser") or 0) > 0, name


def test_every_container_has_a_read_only_root_and_no_privileges(rendered: Rendered) -> None:
    for name, _pod, container in all_containers(rendered):
        context = container.get("securityContext", {})
        assert context.get("readOnlyRootFilesystem") is True, name
        assert context.get("allowPrivilegeEscalation") is False, name
        assert context.get("privileged", False) is False, name
        assert context.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not context.get("capabilities", {}).get("add"), name


def test_pods_use_the_default_seccomp_profile_and_no_api_token(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        spec = pod_template(workload)["spec"]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


def test_the_chart_creates_no_secret(rendered: Rendered) -> None:
    assert rendered.of_kind("Secret") == []


def test_secret_looking_variables_come_from_secrets(rendered: Rendered) -> None:
    seen: set[str] = set()
    for name, _pod, container in all_containers(rendered):
        for env_name, entry in env_of(container).items():
            if SECRET_LOOKING.search(env_name):
                assert "value" not in entry, f"{name}: {env_name} is inlined"
                assert entry["valueFrom"]["secretKeyRef"]["name"], f"{name}: {env_name}"
                seen.add(env_name)
    assert {"OPENAI_API_KEY", "EDUAIQ_SESSION_SECRET"} <= seen


def test_connection_urls_carry_no_literal_password(rendered: Rendered) -> None:
    """A composed URL may only hold a $(VAR) reference to a variable read from a Secret."""
    for name, _pod, container in all_containers(rendered):
        entries = env_of(container)
        for setting in URL_SETTINGS & set(entries):
            entry = entries[setting]
            if "valueFrom" in entry:
                assert entry["valueFrom"]["secretKeyRef"]["name"]
                continue
            password = urlsplit(entry["value"]).password
            if password is None:
                continue
            reference = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", password)
            assert reference, f"{name}: {setting} has a literal password"
            assert "secretKeyRef" in entries[reference.group(1)]["valueFrom"], f"{name}: {setting}"


def test_provider_keys_only_reach_the_gateway(rendered: Rendered) -> None:
    """Least privilege: upstream keys are held by the process that calls upstreams."""
    provider_env = {"OPENAI_API_KEY", "CAMPUS_VLLM_KEY"}
    for name, _pod, container in all_containers(rendered):
        holds = provider_env & set(env_of(container))
        if container["name"] != "gateway":
            assert not holds, f"{name} holds provider keys {holds}"


@pytest.mark.parametrize(
    ("override", "check"),
    [
        (
            {"securityContext": {"readOnlyRootFilesystem": False}},
            test_every_container_has_a_read_only_root_and_no_privileges,
        ),
        (
            {"securityContext": {"capabilities": {"drop": [], "add": ["NET_ADMIN"]}}},
            test_every_container_has_a_read_only_root_and_no_privileges,
        ),
        ({"securityContext": {"runAsNonRoot": False}}, test_every_container_runs_as_non_root),
        ({"securityContext": {"runAsUser": 0}}, test_every_container_runs_as_non_root),
    ],
)
def test_the_checks_notice_a_weakened_context(override: dict[str, Any], check: Any) -> None:
    """The assertions above would catch a values file (or a chart change) loosening the defaults."""
    with pytest.raises(AssertionError):
        check(render_chart(override))
