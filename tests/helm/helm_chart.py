"""Render the Helm chart offline, the way `helm template` would, for the chart tests.

The chart is rendered by Helm's own Go engine through helm-python-sdk (no helm
binary, no cluster), so what the tests read is what `helm install` would send.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

try:
    import helm_python as helm
except ImportError:  # conftest.py skips every chart test, with this reason
    helm = None  # type: ignore[assignment]
MISSING_SDK = "helm-python-sdk is not installed (pip install 'helm-python-sdk>=0.2.2'); CI must install it"

CHART = Path(__file__).resolve().parents[2] / "helm" / "eduaiq"
RELEASE = "eduaiq"
NAMESPACE = "campus-ai"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}


def load_values_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / name).read_text())
    return loaded


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of `-f a.yaml -f b.yaml`: maps merge, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# An institution signing in by SAML (with a signing key pair) and OIDC (confidential client).
SSO_SECTION: dict[str, Any] = {
    "saml": {
        "entity_id": "https://idp.example.edu/idp/shibboleth",
        "sso_url": "https://idp.example.edu/idp/profile/SAML2/Redirect/SSO",
        "x509_cert": "MIIC" + "A" * 40,
        "sp_cert": "MIIC" + "B" * 40,
        "sp_private_key_env": "STATEU_SAML_SP_KEY",
    },
    "oidc": {
        "issuer": "https://login.example.edu",
        "client_id": "eduaiq",
        "client_secret_env": "STATEU_OIDC_SECRET",
    },
}

# Every external-service option switched to its other mode, so each template
# branch is rendered and validated at least once.
EXTERNAL_SERVICES: dict[str, Any] = {
    "database": {"urlSecret": {"name": "pg-app", "key": "uri"}},
    "redis": {"tls": True, "passwordSecret": {"name": "redis-auth", "key": "password"}},
    "kafka": {
        "bootstrap": "b-1.kafka.campus:9096,b-2.kafka.campus:9096",
        "securityProtocol": "SASL_SSL",
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": "eduaiq",
            "passwordSecret": {"name": "kafka-auth", "key": "password"},
        },
    },
    "caBundle": {"configMap": "campus-ca", "key": "ca-bundle.crt"},
    "ssoKeys": [
        {"env": "STATEU_SAML_SP_KEY", "secretName": "eduaiq-sso", "key": "saml-sp.key"},
        {"env": "STATEU_OIDC_SECRET", "secretName": "eduaiq-sso", "key": "oidc-client-secret"},
    ],
    "org": {"file": {"sso": SSO_SECTION}},
    "settings": {"upstream_read_timeout": 300, "max_body_bytes": 33554432, "key_cache_seconds": 1.5},
    "gateway": {"spool": {"persistence": {"enabled": True, "storageClass": "fast-ssd"}}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "serviceAccount": {"create": False, "name": "eduaiq-workload-identity"},
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": load_values_file("values-gpu.yaml"),
    "external-services": deep_merge(load_values_file("values-gpu.yaml"), EXTERNAL_SERVICES),
    "no-autoscaling": {
        "gateway": {"autoscaling": {"enabled": False}},
        "ingress": {"tls": {"enabled": False}},
    },
}


@dataclass(frozen=True)
class Rendered:
    """The manifests of one render, indexed for the questions tests ask."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def workload(self, component: str) -> dict[str, Any]:
        """The workload object whose pods carry app.kubernetes.io/component=component."""
        found = [
            o
            for o in self.objects
            if o["kind"] in WORKLOAD_KINDS
            and pod_template(o)["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one workload for component {component}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in WORKLOAD_KINDS]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = workload["spec"]["template"]
    return template


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_template(workload)["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one long-running container of a pod (init containers excluded)."""
    (container,) = pod_template(workload)["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name (duplicates would be a chart bug)."""
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}: {names}"
    return {e["name"]: e for e in container.get("env", [])}


def render_chart(values: dict[str, Any] | None = None) -> Rendered:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects)


def imported_org_text(rendered: Rendered) -> str:
    """The institution file `eduaiq org import` would read, produced the way the import Job does.

    The Job's ConfigMap is written to a scratch directory standing in for the
    mount, its init container (if any) is run with this interpreter, and the
    file named in the import command is returned.
    """
    import subprocess
    import sys
    import tempfile

    job = rendered.workload("org-import")
    spec = pod_template(job)["spec"]
    (main,) = spec["containers"]
    org_mount = next(m for m in main["volumeMounts"] if m["name"] == "org")["mountPath"]
    configmap_name = next(v for v in spec["volumes"] if v["name"] == "org")["configMap"]["name"]
    data = rendered.get("ConfigMap", configmap_name)["data"]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)

        def local(path: str) -> Path:
            return root / path.lstrip("/")

        mounted = local(org_mount)
        mounted.mkdir(parents=True)
        for key, text in data.items():
            (mounted / key).write_text(text, encoding="utf-8")
        for init in spec.get("initContainers", []):
            program, *args = init["command"]
            assert program == "python3", init["command"]
            for arg in args[-1:]:
                local(arg).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, *(str(local(a)) for a in args)], check=True, capture_output=True)
        return local(main["command"][-1]).read_text(encoding="utf-8")


def imported_org(rendered: Rendered) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(imported_org_text(rendered))
    return loaded
