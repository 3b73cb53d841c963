"""IPv6 addresses that carry an IPv4 address are judged by the IPv4 address they carry.

The attack: an admin writes a provider `base_url` (or a replica, or a metrics URL) as an IPv6 literal
that embeds 169.254.169.254, 10.x or 127.0.0.1, for instance `http://[64:ff9b::a9fe:a9fe]/`: on an
IPv6-only cluster with NAT64, that is the metadata service; Python's `is_global` calls it global, so
the policy let it through. Likewise 6to4, Teredo, IPv4-compatible and IPv4-translated forms, and the
deprecated site-local range fec0::/10 (private, but `is_global` says otherwise).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from providers.upstream_policy import UpstreamPolicy, public_address
from tests.admin_api.conftest import Env, drop_env, make_env
from tests.security.test_provider_secrets import strict_settings

# Each form with a private (169.254.169.254, 10.1.2.3 or 127.0.0.1) IPv4 address inside.
EMBEDDING_PRIVATE = {
    "nat64": "64:ff9b::a9fe:a9fe",
    "nat64-local-use": "64:ff9b:1::a01:203",
    "6to4": "2002:a9fe:a9fe::1",
    "ipv4-compatible": "::a9fe:a9fe",
    "ipv4-compatible-loopback": "::7f00:1",
    "ipv4-mapped": "::ffff:a01:203",
    "ipv4-translated": "::ffff:0:a9fe:a9fe",
    "teredo": "2001:0:808:808::5601:5601",  # server 8.8.8.8, client 169.254.169.254 (stored inverted)
    "site-local": "fec0::a9fe:a9fe",
}
# The same forms around a public IPv4 address (8.8.8.8): what DNS64 hands out for a public upstream on an
# IPv6-only network must keep working.
EMBEDDING_PUBLIC = {
    "nat64": "64:ff9b::808:808",
    "6to4": "2002:808:808::1",
    "ipv4-mapped": "::ffff:808:808",
    "ipv4-translated": "::ffff:0:808:808",
}


@pytest.mark.parametrize("form", sorted(EMBEDDING_PRIVATE))
def test_ipv6_forms_embedding_a_private_ipv4_address_are_not_public(form: str) -> None:
    address = ipaddress.ip_address(EMBEDDING_PRIVATE[form])
    assert not public_address(address)
    policy = UpstreamPolicy()
    assert not policy.address_allowed("upstream.example.com", address)  # a name resolving to it: the pool
    problem = policy.url_problem("providers[0].base_url", f"http://[{address}]:8000/v1")  # a literal
    assert problem is not None and "EDUAIQ_UPSTREAM_ALLOWED_CIDRS" in problem


@pytest.mark.parametrize("form", sorted(EMBEDDING_PUBLIC))
def test_the_same_forms_around_a_public_address_stay_public(form: str) -> None:
    address = ipaddress.ip_address(EMBEDDING_PUBLIC[form])
    assert public_address(address)
    assert UpstreamPolicy().url_problem("providers[0].base_url", f"https://[{address}]/v1") is None


@pytest.fixture
async def strict_env(pg_url: str, redis_url: str) -> AsyncIterator[Env]:
    env = await make_env(strict_settings(pg_url, redis_url))
    try:
        yield env
    finally:
        await drop_env(env)


async def test_admin_api_refuses_a_nat64_address_of_the_metadata_service(strict_env: Env) -> None:
    client = await strict_env.login("uadmin")
    for field_name, body in (
        ("base_url", {"type": "vllm", "base_url": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data"}),
        ("replicas[0]", {"type": "vllm", "base_url": "https://gpu.example.com/v1",
                         "replicas": ["http://[2002:a9fe:a9fe::1]/v1"]}),
        ("metrics_url", {"type": "vllm", "base_url": "https://gpu.example.com/v1",
                         "metrics_url": "http://[fec0::1]:9090/metrics"}),
    ):  # fmt: skip
        response = await client.put("/api/v1/providers/nat64", json=body)
        assert response.status_code == 422, (field_name, response.text)
        problems = response.json()["error"]["details"]["problems"]
        assert any(p["path"].endswith(field_name) for p in problems), problems
    listed = await client.get("/api/v1/providers")
    assert "nat64" not in {p["id"] for p in listed.json()}
