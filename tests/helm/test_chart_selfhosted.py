"""Self-hosted models: a vLLM server per catalogue entry, and the gateway's providers pointing at them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from helm_chart import (
    NAMESPACE,
    VALUE_SETS,
    Rendered,
    containers,
    env_of,
    helm,
    imported_org,
    pod_template,
    render_chart,
)

GPU_VALUES = VALUE_SETS["gpu"]
MODELS = GPU_VALUES["selfHosted"]["models"]


@pytest.fixture(scope="module")
def gpu() -> Rendered:
    return render_chart(GPU_VALUES)


def model_deployment(rendered: Rendered, name: str) -> dict[str, Any]:
    found = [
        d
        for d in rendered.of_kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("eduaiq.io/model") == name
    ]
    assert len(found) == 1, f"expected one vLLM Deployment for {name}, found {len(found)}"
    return found[0]


def test_default_values_run_no_model_servers() -> None:
    rendered = render_chart({})
    assert not [d for d in rendered.of_kind("Deployment") if "eduaiq.io/model" in d["metadata"]["labels"]]


@pytest.mark.parametrize("model", MODELS, ids=[m["name"] for m in MODELS])
def test_each_model_gets_a_gpu_deployment(gpu: Rendered, model: dict[str, Any]) -> None:
    deployment = model_deployment(gpu, model["name"])
    spec = pod_template(deployment)["spec"]
    (container,) = containers(deployment)
    assert container["image"].startswith("vllm/vllm-openai:")
    assert container["command"] == ["vllm", "serve"]
    assert container["args"][0] == model["model"]
    args = container["args"]
    flags = [str(a) for a in model["args"]]
    assert any(args[i : i + len(flags)] == flags for i in range(len(args))), (
        "profile flags must pass through in order"
    )
    assert container["resources"]["limits"]["nvidia.com/gpu"] == model["gpus"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}


@pytest.mark.parametrize("model", MODELS, ids=[m["name"] for m in MODELS])
def test_weights_live_on_the_volume_hf_home_points_at(gpu: Rendered, model: dict[str, Any]) -> None:
    deployment = model_deployment(gpu, model["name"])
    (container,) = containers(deployment)
    hf_home = env_of(container)["HF_HOME"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == hf_home)
    volume = next(v for v in pod_template(deployment)["spec"]["volumes"] if v["name"] == mount["name"])
    if "pvc" in model["weights"]:
        claim = gpu.get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["resources"]["requests"]["storage"] == model["weights"]["pvc"]["size"]
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert volume["hostPath"]["path"] == model["weights"]["hostPath"]


@pytest.mark.parametrize("model", MODELS, ids=[m["name"] for m in MODELS])
def test_the_gateway_provider_points_at_the_model_service(gpu: Rendered, model: dict[str, Any]) -> None:
    providers = [
        p
        for p in imported_org(gpu)["providers"]
        if any(m["id"] == model["name"] for m in p.get("models", []))
    ]
    (provider,) = providers
    (entry,) = provider["models"]
    # The gateway asks the server for the name it serves the model under.
    (container,) = containers(model_deployment(gpu, model["name"]))
    served = container["args"][container["args"].index("--served-model-name") + 1]
    assert entry["upstream"] == served == model["name"]
    for key, value in model["catalogue"].items():
        assert entry[key] == value
    # base_url is http://<service>.<namespace>.svc:<port>/v1 of a Service selecting this model's pods.
    host, port = provider["base_url"].removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
    service_name, namespace, svc = host.split(".")
    assert (namespace, svc) == (NAMESPACE, "svc")
    service = gpu.get("Service", service_name)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    pods = pod_template(model_deployment(gpu, model["name"]))["metadata"]["labels"]
    assert all(pods.get(k) == v for k, v in service["spec"]["selector"].items())


def test_server_and_gateway_share_the_model_api_key(gpu: Rendered) -> None:
    key = GPU_VALUES["selfHosted"]["apiKey"]
    gateway_env = env_of(containers(gpu.workload("gateway"))[0])
    assert gateway_env[key["env"]]["valueFrom"]["secretKeyRef"] == {
        "name": key["secretName"],
        "key": key["key"],
    }
    for model in MODELS:
        (container,) = containers(model_deployment(gpu, model["name"]))
        server_key = env_of(container)["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert server_key == {"name": key["secretName"], "key": key["key"]}
    campus = [p for p in imported_org(gpu)["providers"] if p["id"].startswith("campus-")]
    assert campus and {p["api_key_env"] for p in campus} == {key["env"]}


def test_the_operator_providers_are_kept_beside_the_generated_ones(gpu: Rendered) -> None:
    ids = [p["id"] for p in imported_org(gpu)["providers"]]
    assert ids == ["openai", "campus-qwen2-vl-7b", "campus-llama-3-1-8b"]


def test_a_declared_provider_of_the_same_id_is_replaced_not_duplicated() -> None:
    org = yaml.safe_load(yaml.safe_dump(GPU_VALUES["org"]["file"]))
    org["providers"].append(
        {"id": "campus-qwen2-vl-7b", "type": "vllm", "base_url": "http://old:8000/v1", "models": []}
    )
    rendered = render_chart({**GPU_VALUES, "org": {"file": org}})
    matching = [p for p in imported_org(rendered)["providers"] if p["id"] == "campus-qwen2-vl-7b"]
    assert len(matching) == 1 and matching[0]["base_url"] != "http://old:8000/v1"


def test_registration_can_be_left_to_the_institution_file() -> None:
    rendered = render_chart(
        {**GPU_VALUES, "selfHosted": {**GPU_VALUES["selfHosted"], "registerInOrg": False}}
    )
    assert [p["id"] for p in imported_org(rendered)["providers"]] == ["openai"]
    assert (
        len([d for d in rendered.of_kind("Deployment") if "eduaiq.io/model" in d["metadata"]["labels"]]) == 2
    )


def test_model_names_colliding_as_object_names_refuse_to_render() -> None:
    twins = [dict(MODELS[1]), {**MODELS[1], "name": "llama-3-1-8b"}]
    with pytest.raises(helm.HelmRenderError, match="collides"):
        render_chart({**GPU_VALUES, "selfHosted": {**GPU_VALUES["selfHosted"], "models": twins}})


def test_tensor_parallel_models_take_several_gpus_and_shared_memory() -> None:
    big = {
        "name": "llama-3.1-70b",
        "model": "meta-llama/Llama-3.1-70B-Instruct",
        "args": ["--tensor-parallel-size", 4, "--max-model-len", 16384],
        "gpus": 4,
        "shmSize": "32Gi",
        "weights": {"pvc": {"existingClaim": "llama-70b-weights"}},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    }
    rendered = render_chart({"selfHosted": {"models": [big], "apiKey": {"secretName": "eduaiq-vllm"}}})
    deployment = model_deployment(rendered, "llama-3.1-70b")
    (container,) = containers(deployment)
    spec = pod_template(deployment)["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["args"][-4:] == ["--tensor-parallel-size", "4", "--max-model-len", "16384"]
    shm = next(v for v in spec["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert spec["nodeSelector"] == big["nodeSelector"]
    weights = next(v for v in spec["volumes"] if v["name"] == "weights")
    assert weights["persistentVolumeClaim"]["claimName"] == "llama-70b-weights"
    assert rendered.of_kind("PersistentVolumeClaim") == []
