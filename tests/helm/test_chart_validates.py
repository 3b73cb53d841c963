"""The chart lints clean and every object it renders is valid Kubernetes.

Validation is strict (unknown fields are errors, as `kubectl apply --validate=strict`
would report them) against the oldest Kubernetes the chart claims to support and
the newest release kubernetes-validate ships schemas for.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from helm_chart import CHART, VALUE_SETS, Rendered, helm, render_chart

kv = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (pip install 'kubernetes-validate>=1.37'); CI must install it",
)
from kubernetes_validate import utils as kv_utils  # noqa: E402

# Kinds whose schema is a CRD kubernetes-validate cannot know; checked by hand below.
CRD_KINDS = {"ServiceMonitor"}


def chart_floor_version() -> str:
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", constraint)
    assert match, f"Chart.yaml kubeVersion {constraint!r} is not a plain lower bound"
    return match.group(1)


KUBE_VERSIONS = sorted({chart_floor_version(), kv_utils.latest_version()})


def test_latest_schema_is_a_current_kubernetes_release() -> None:
    major, minor = (int(p) for p in kv_utils.latest_version().split(".")[:2])
    assert (major, minor) >= (1, 33), "kubernetes-validate ships no current Kubernetes schemas; upgrade it"


def test_chart_floor_is_validated() -> None:
    assert chart_floor_version() in kv_utils.all_versions()


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_lints_without_warnings(name: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, namespace="campus-ai")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], (report["errors"], problems)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"gatway": {"replicas": 3}}, "additional properties 'gatway' not allowed"),
        ({"adminApi": {"replicas": "two"}}, "/adminApi/replicas"),
        ({"selfHosted": {"models": [{"name": "m", "model": "org/m"}]}}, "missing property 'weights'"),
        ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
    ],
)
def test_lint_reports_values_the_chart_does_not_take(values: dict[str, Any], complaint: str) -> None:
    """Lint is a real gate: values.schema.json turns typos into errors instead of silent defaults."""
    report = helm.lint(str(CHART), values, strict=True)
    assert any(complaint in e for e in report["errors"]), report


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(rendered: Rendered, version: str) -> None:
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kv_utils.validate(obj, version, strict=True)
        except kv_utils.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for {version} at {where}: {exc.message}"
            )
        except kv_utils.SchemaNotFoundError as exc:
            pytest.fail(exc.message)
        checked += 1
    assert checked >= 10


def test_validation_catches_an_unknown_field(rendered: Rendered) -> None:
    """Strict validation rejects what the API server would: a misspelt field."""
    deployment: dict[str, Any] = dict(rendered.of_kind("Deployment")[0])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kv_utils.ValidationError):
        kv_utils.validate(deployment, kv_utils.latest_version(), strict=True)


def test_service_monitor_scrapes_the_http_services() -> None:
    rendered = render_chart(VALUE_SETS["external-services"])
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s
        for s in rendered.of_kind("Service")
        if all(s["metadata"]["labels"].get(k) == v for k, v in wanted.items())
    ]
    components = sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected)
    assert components == ["admin-api", "gateway"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
