"""How the processes are wired: commands, probes, hooks, scaling, Services and the Ingress."""

from __future__ import annotations

from typing import Any

import pytest
from helm_chart import Rendered, containers, env_of, imported_org, main_container, pod_template, render_chart

# The `eduaiq` console-script commands the chart runs; cli/main.py must keep them.
COMMANDS = {
    "gateway": ["eduaiq", "gateway", "--host", "0.0.0.0", "--port", "8000"],
    "admin-api": ["eduaiq", "admin-api", "--host", "0.0.0.0", "--port", "8001"],
    "consumer": ["eduaiq", "consume"],
    "worker": ["eduaiq", "worker"],
    "beat": ["eduaiq", "beat"],
    "migrate": ["eduaiq", "migrate"],
    # Followed by the path of the file (see test_org_import_reads_the_institution_file_from_its_configmap).
    "org-import": ["eduaiq", "org", "import"],
}


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def selected_workloads(rendered: Rendered, selector: dict[str, str]) -> list[dict[str, Any]]:
    return [w for w in rendered.workloads() if labels_match(selector, pod_template(w)["metadata"]["labels"])]


@pytest.mark.parametrize("component", sorted(COMMANDS))
def test_each_process_runs_its_eduaiq_command(rendered: Rendered, component: str) -> None:
    container = main_container(rendered.workload(component))
    expected = COMMANDS[component]
    if component == "org-import":
        assert len(container["command"]) == len(expected) + 1 and container["command"][-1].endswith(".yaml")
        expected = [*expected, container["command"][-1]]
    assert container["command"] == expected
    assert "args" not in container


def test_one_image_runs_every_process(rendered: Rendered) -> None:
    images = {c["image"] for w in rendered.workloads() for c in containers(w) if c["name"] != "vllm"}
    assert images == {"eduaiq:0.1.0"}
    tagged = render_chart({"image": {"repository": "registry.campus/eduaiq", "tag": "1.2.3"}})
    assert {main_container(tagged.workload(c))["image"] for c in COMMANDS} == {"registry.campus/eduaiq:1.2.3"}


@pytest.mark.parametrize("component", ["gateway", "admin-api"])
def test_http_processes_probe_healthz_and_readyz(rendered: Rendered, component: str) -> None:
    (container,) = containers(rendered.workload(component))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert str(ports["http"]) == container["command"][-1]


def test_every_container_requests_cpu_and_memory(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(workload):
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), workload["metadata"]["name"]


def test_migration_is_a_pre_install_and_pre_upgrade_hook_before_the_org_import(rendered: Rendered) -> None:
    migrate = rendered.workload("migrate")
    org_import = rendered.workload("org-import")
    assert migrate["kind"] == org_import["kind"] == "Job"
    hook = migrate["metadata"]["annotations"]
    assert set(hook["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in hook["helm.sh/hook-delete-policy"]
    assert set(org_import["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {
        "post-install",
        "post-upgrade",
    }
    assert pod_template(migrate)["spec"]["restartPolicy"] == "Never"


def test_pre_install_hook_uses_no_account_the_release_has_not_created_yet() -> None:
    rendered = render_chart({})
    created = {a["metadata"]["name"] for a in rendered.of_kind("ServiceAccount")}
    spec = pod_template(rendered.workload("migrate"))["spec"]
    assert spec.get("serviceAccountName", "default") not in created
    existing = render_chart({"serviceAccount": {"create": False, "name": "campus-db-identity"}})
    assert pod_template(existing.workload("migrate"))["spec"]["serviceAccountName"] == "campus-db-identity"


def test_org_import_reads_the_institution_file_from_its_configmap(rendered: Rendered) -> None:
    """Following the Job's own mounts (and init step, if any) leads to the configured institution."""
    assert imported_org(rendered)["institution"]["id"] == "example-university"


def test_an_existing_org_configmap_is_mounted_and_none_is_created() -> None:
    rendered = render_chart({"org": {"existingConfigMap": "stateu-org"}})
    assert [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-org")] == []
    job = rendered.workload("org-import")
    volume = next(v for v in pod_template(job)["spec"]["volumes"] if v["name"] == "org")
    assert volume["configMap"]["name"] == "stateu-org"
    assert main_container(job)["command"][-1].startswith(
        next(m for m in main_container(job)["volumeMounts"] if m["name"] == "org")["mountPath"] + "/"
    )
    assert "initContainers" not in pod_template(job)["spec"]


def test_beat_is_a_single_replica_that_is_replaced_not_rolled(rendered: Rendered) -> None:
    beat = rendered.workload("beat")
    assert beat["kind"] == "Deployment"
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    # Its schedule file lands in the writable state directory.
    (container,) = containers(beat)
    assert container["workingDir"] == env_of(container)["EDUAIQ_STATE_DIR"]["value"]


def test_consumers_scale_by_value() -> None:
    rendered = render_chart({"consumer": {"replicas": 12}})
    assert rendered.workload("consumer")["spec"]["replicas"] == 12


def test_the_autoscaler_owns_the_gateway_replica_count(rendered: Rendered) -> None:
    gateway = rendered.workload("gateway")
    autoscalers = rendered.of_kind("HorizontalPodAutoscaler")
    if not autoscalers:
        assert gateway["spec"]["replicas"] >= 1
        return
    (hpa,) = autoscalers
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (gateway["kind"], gateway["metadata"]["name"])
    assert "replicas" not in gateway["spec"], (
        "a fixed replica count would fight the autoscaler on every upgrade"
    )
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_disruption_budgets_each_cover_one_component(rendered: Rendered) -> None:
    budgets = rendered.of_kind("PodDisruptionBudget")
    covered = set()
    for pdb in budgets:
        (workload,) = selected_workloads(rendered, pdb["spec"]["selector"]["matchLabels"])
        covered.add(pod_template(workload)["metadata"]["labels"]["app.kubernetes.io/component"])
    assert {"gateway", "admin-api"} <= covered


def test_no_budget_over_a_single_replica_blocks_node_drains() -> None:
    rendered = render_chart(
        {"adminApi": {"replicas": 1}, "gateway": {"autoscaling": {"enabled": False}, "replicas": 1}}
    )
    covered = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]
        for p in rendered.of_kind("PodDisruptionBudget")
    }
    assert covered == {"consumer"}


def test_services_select_one_workload_and_name_its_ports(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        (workload,) = selected_workloads(rendered, service["spec"]["selector"])
        names = {p["name"] for c in containers(workload) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, service["metadata"]["name"]


def test_ingress_sends_v1_to_the_gateway_and_the_rest_to_the_admin_api(rendered: Rendered) -> None:
    (ingress,) = rendered.of_kind("Ingress")
    (rule,) = ingress["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    for path, component in [("/v1", "gateway"), ("/", "admin-api")]:
        service = rendered.get("Service", routes[path]["name"])
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == component
        assert routes[path]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    # Streams must not be buffered by ingress-nginx.
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_the_spool_is_an_empty_dir_by_default() -> None:
    gateway = render_chart({}).workload("gateway")
    assert gateway["kind"] == "Deployment"
    (container,) = containers(gateway)
    spool = env_of(container)["EDUAIQ_SPOOL_DIR"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == spool)
    volume = next(v for v in pod_template(gateway)["spec"]["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_a_persistent_spool_gives_each_gateway_replica_its_own_claim() -> None:
    rendered = render_chart({"gateway": {"spool": {"persistence": {"enabled": True, "size": "20Gi"}}}})
    gateway = rendered.workload("gateway")
    assert gateway["kind"] == "StatefulSet"
    (container,) = containers(gateway)
    spool = env_of(container)["EDUAIQ_SPOOL_DIR"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == spool)
    (claim,) = gateway["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert mount["name"] not in {v["name"] for v in pod_template(gateway)["spec"]["volumes"]}
    # Claims outlive pods, scale-downs and uninstalls: spooled events are never thrown away.
    assert gateway["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    governing = rendered.get("Service", gateway["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("read_timeout", [60, 300, 900, 1799.5])
def test_gateway_outlives_the_longest_stream_when_stopping(read_timeout: float) -> None:
    """Pods get longer to stop than an upstream may take to answer, so scale-downs finish streams."""
    rendered = render_chart({"settings": {"upstream_read_timeout": read_timeout}})
    spec = pod_template(rendered.workload("gateway"))["spec"]
    assert spec["terminationGracePeriodSeconds"] > read_timeout


@pytest.mark.parametrize("grace", [None, 10, 600, 1200.5])
def test_gateway_pods_outlive_the_process_shutdown_grace_period(grace: float | None) -> None:
    """Kubernetes must not kill a gateway before its own grace period for streams (300 s by default) is over."""
    rendered = render_chart({"settings": {"shutdown_grace_seconds": grace}} if grace is not None else {})
    spec = pod_template(rendered.workload("gateway"))["spec"]
    assert spec["terminationGracePeriodSeconds"] >= (300 if grace is None else grace) + 60
