"""Issue 17 items 8, 7 and 1 in the chart: who may reach the GPUs, where the gateway may connect, the
model servers' API key, remote media, and the gateway's upstream policy.

NetworkPolicies are judged the way a CNI applies them: a policy selects the pods whose labels match its
podSelector, and a peer selector admits the pods whose labels match it; the tests match those selectors
against the labels of every pod template the chart renders.
"""

from __future__ import annotations

from typing import Any

import pytest
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


@pytest.fixture(scope="module")
def gpu() -> Rendered:
    return render_chart(GPU_VALUES)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and the Exists/In operators the chart uses)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "Exists" and expr["key"] not in labels:
            return False
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def pods(rendered: Rendered) -> dict[str, dict[str, str]]:
    return {w["metadata"]["name"]: pod_template(w)["metadata"]["labels"] for w in rendered.workloads()}


def vllm_pods(rendered: Rendered) -> set[str]:
    return {
        w["metadata"]["name"] for w in rendered.workloads() if "eduaiq.io/model" in w["metadata"]["labels"]
    }


def policies_selecting(rendered: Rendered, workload: str, kind: str) -> list[dict[str, Any]]:
    labels = pods(rendered)[workload]
    return [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]


def test_only_gateway_pods_reach_the_model_servers(gpu: Rendered) -> None:
    every_pod = pods(gpu)
    gateway = gpu.workload("gateway")["metadata"]["name"]
    assert len(vllm_pods(gpu)) == 2
    for server in vllm_pods(gpu):
        (policy,) = policies_selecting(gpu, server, "Ingress")
        rules = policy["spec"]["ingress"]
        admitted = {
            name
            for rule in rules
            for peer in rule["from"]
            for name, labels in every_pod.items()
            if "podSelector" in peer
            and "namespaceSelector" not in peer
            and selects(peer["podSelector"], labels)
        }
        assert admitted == {gateway}
        assert all(
            set(peer) == {"podSelector"} for rule in rules for peer in rule["from"]
        )  # no ipBlock, no ns
        assert [p["port"] for rule in rules for p in rule["ports"]] == [
            GPU_VALUES["selfHosted"].get("port", 8000)
        ]


def test_the_gateway_connects_only_where_it_must(gpu: Rendered) -> None:
    gateway = gpu.workload("gateway")["metadata"]["name"]
    (policy,) = policies_selecting(gpu, gateway, "Egress")
    assert {w for w in pods(gpu) if policies_selecting(gpu, w, "Egress")} == {gateway}
    rules = policy["spec"]["egress"]
    ports = {(p["port"], p.get("protocol", "TCP")) for rule in rules for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (6379, "TCP"), (9092, "TCP"), (8000, "TCP"),
                     (443, "TCP")}  # fmt: skip
    assert all(rule.get("ports") for rule in rules)  # no rule opens every port
    model_rule = next(r for r in rules if any(p["port"] == 8000 for p in r["ports"]))
    (peer,) = model_rule["to"]
    assert {w for w, labels in pods(gpu).items() if selects(peer["podSelector"], labels)} == vllm_pods(gpu)
    https = next(r for r in rules if any(p["port"] == 443 for p in r["ports"]))
    blocks = {b["ipBlock"]["cidr"]: set(b["ipBlock"]["except"]) for b in https["to"]}
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"} <= blocks[
        "0.0.0.0/0"
    ]
    assert {"fe80::/10", "fc00::/7", "::1/128"} <= blocks["::/0"]
    # IPv6 forms carrying an IPv4 address reach the private ranges again (64:ff9b::a9fe:a9fe is the
    # metadata service through NAT64): found by the attack review
    assert {"64:ff9b::/96", "2002::/16", "::ffff:0:0/96", "fec0::/10", "2001::/32"} <= blocks["::/0"]


def test_operators_can_widen_the_policies() -> None:
    campus = {"to": [{"ipBlock": {"cidr": "10.40.0.0/16"}}], "ports": [{"port": 8000, "protocol": "TCP"}]}
    scrape = {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
              "ports": [{"port": 8000, "protocol": "TCP"}]}  # fmt: skip
    stores = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "databases"}}}]
    rendered = render_chart({**GPU_VALUES, "networkPolicy": {"extraGatewayEgress": [campus],
                             "extraVllmIngress": [scrape], "dataStores": stores}})  # fmt: skip
    gateway = rendered.workload("gateway")["metadata"]["name"]
    (egress,) = policies_selecting(rendered, gateway, "Egress")
    assert campus in egress["spec"]["egress"]
    assert any(r.get("to") == stores and {p["port"] for p in r["ports"]} == {5432, 6379, 9092}
               for r in egress["spec"]["egress"])  # fmt: skip
    (ingress,) = policies_selecting(rendered, next(iter(vllm_pods(rendered))), "Ingress")
    assert scrape in ingress["spec"]["ingress"]
    assert render_chart({**GPU_VALUES, "networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy") == []


def test_model_servers_refuse_to_render_without_an_api_key() -> None:
    no_key = {**GPU_VALUES, "selfHosted": {**GPU_VALUES["selfHosted"], "apiKey": {"env": "CAMPUS_VLLM_KEY",
                                                                                  "secretName": ""}}}  # fmt: skip
    with pytest.raises(helm.HelmRenderError, match="apiKey"):
        render_chart(no_key)
    # No models, no key needed.
    assert render_chart({"selfHosted": {"apiKey": {"secretName": ""}}}).of_kind("NetworkPolicy")


def test_model_servers_fetch_no_remote_media(gpu: Rendered) -> None:
    for name in vllm_pods(gpu):
        (container,) = containers(next(w for w in gpu.workloads() if w["metadata"]["name"] == name))
        args = container["args"]
        allowed = args[args.index("--allowed-media-domains") + 1]
        assert allowed.endswith(".invalid")  # RFC 6761: no host has this name, so no URL is fetched
        assert "--allowed-local-media-path" not in args


def test_the_gateway_reads_only_the_declared_provider_keys_and_reaches_the_model_services(
    gpu: Rendered,
) -> None:
    env = env_of(containers(gpu.workload("gateway"))[0])
    declared = set(env["EDUAIQ_PROVIDER_SECRET_VARS"]["value"].split(","))
    hosts = set(env["EDUAIQ_UPSTREAM_ALLOWED_HOSTS"]["value"].split(","))
    vllm_key = GPU_VALUES["selfHosted"]["apiKey"]["env"]
    # The model servers' key is bound to their Services: an admin cannot send it to any other host.
    assert declared == {k["env"] for k in GPU_VALUES.get("providerKeys", VALUE_SETS["default"].get("providerKeys", []))
                        } | {"OPENAI_API_KEY"} | {f"{vllm_key}@{h}" for h in hosts}  # fmt: skip
    campus = [p for p in imported_org(gpu)["providers"] if p["id"].startswith("campus-")]
    assert campus and {p["base_url"].split("//")[1].split(":")[0] for p in campus} == hosts
    assert all(h.endswith(f".{NAMESPACE}.svc") for h in hosts)
    assert env["EDUAIQ_UPSTREAM_ALLOWED_CIDRS"]["value"] == ""
    wider = render_chart({**GPU_VALUES, "upstream": {"allowedHosts": ["gpu01.campus.internal"],
                                                     "allowedCidrs": ["10.40.0.0/16"]}})  # fmt: skip
    wider_env = env_of(containers(wider.workload("gateway"))[0])
    assert "gpu01.campus.internal" in wider_env["EDUAIQ_UPSTREAM_ALLOWED_HOSTS"]["value"].split(",")
    assert wider_env["EDUAIQ_UPSTREAM_ALLOWED_CIDRS"]["value"] == "10.40.0.0/16"
    with pytest.raises(helm.HelmRenderError, match="set by the chart"):
        render_chart({"settings": {"provider_secret_vars": "PGPASSWORD"}})


def test_provider_keys_can_be_scoped_to_an_institution_and_a_host() -> None:
    """Several institutions on one gateway: each key is declared for its own institution (and host), so one
    institution's admins cannot name another's key (providers/upstream_policy.py checks the entries)."""
    keys = [
        {"env": "OPENAI_API_KEY", "secretName": "keys", "key": "a", "institution": "stateu",
         "host": "api.openai.com"},
        {"env": "TECH_ANTHROPIC_KEY", "secretName": "keys", "key": "b", "institution": "tech"},
    ]  # fmt: skip
    env = env_of(containers(render_chart({"providerKeys": keys}).workload("gateway"))[0])
    assert set(env["EDUAIQ_PROVIDER_SECRET_VARS"]["value"].split(",")) == {
        "stateu:OPENAI_API_KEY@api.openai.com",
        "tech:TECH_ANTHROPIC_KEY",
    }
