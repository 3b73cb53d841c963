"""A person provisioned by SCIM loses access on every gateway process within 10 s of their IdP saying so
(issue 18): real `eduaiq gateway` processes (two, of two workers each) and a real `eduaiq serve` process
for /scim/v2 and the admin API, on PostgreSQL, Redis and Kafka; the IdP is a plain httpx client.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.harness import Stack, gateway_stack
from tests.people.test_leavers import _everywhere
from tests.scim.conftest import SCIM_SECTION, start_server

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@pytest.fixture
def stack(pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    def with_scim(doc: dict[str, Any]) -> None:
        doc["scim"] = SCIM_SECTION

    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, gateways=2, workers=2,
                       mutate=with_scim) as s:  # fmt: skip
        yield s


@pytest.fixture
def admin_url(stack: Stack, tmp_path: Path) -> Iterator[str]:
    url, proc = start_server({**stack.env, "EDUAIQ_SPOOL_DIR": str(tmp_path / "spool-serve")}, tmp_path)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _idp(stack: Stack, admin_url: str) -> httpx.Client:
    made = stack.cli("scim", "token", "create", "--institution", stack.institution)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    return httpx.Client(
        base_url=f"{admin_url}/scim/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _provision(idp: httpx.Client, user_name: str) -> tuple[str, str]:
    """A person and the course group they are in, as Entra ID pushes them; (user id, group id)."""
    made = idp.post("/Users", json={"schemas": [USER], "userName": user_name, "externalId": "oid-" + user_name,
                                    "active": True, "displayName": "Sam Leaver",
                                    "emails": [{"value": user_name, "type": "work", "primary": True}]})  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.headers["content-type"].startswith("application/scim+json")
    user_id = made.json()["id"]
    group = idp.post(
        "/Groups", json={"displayName": "eduaiq-course-cs101-students", "members": [{"value": user_id}]}
    )
    assert group.status_code == 201, group.text
    return user_id, group.json()["id"]


def _key(admin_url: str, institution: str, user_id: str) -> str:
    """The person takes a key for their course as they would in the dashboard (dev sign-in, admin API)."""
    with httpx.Client(base_url=admin_url, timeout=30) as browser:
        signed_in = browser.get("/auth/dev/login", params={"user": user_id, "institution": institution})
        assert signed_in.status_code == 303, signed_in.text
        me = browser.get("/api/v1/me")
        assert me.status_code == 200, me.text
        assert any(m["unit_id"] == "cs101" and m["role"] == "student" for m in me.json()["memberships"]), (
            me.text
        )
        created = browser.post("/api/v1/keys", json={"unit_id": "cs101"},
                               headers={"X-CSRF-Token": browser.cookies["eduaiq_csrf"]})  # fmt: skip
        assert created.status_code == 201, created.text
        return str(created.json()["key"])


def test_active_false_from_the_idp_stops_the_key_on_every_gateway(stack: Stack, admin_url: str) -> None:
    idp = _idp(stack, admin_url)
    user_id, _ = _provision(idp, "sam.leaver@uni.example")
    key = _key(admin_url, stack.institution, user_id)
    _everywhere(stack, key, 200)
    patched = idp.patch(f"/Users/{user_id}", json={"schemas": [PATCH],
                                                   "Operations": [{"op": "Replace", "path": "active", "value": "False"}]})  # fmt: skip
    assert patched.status_code == 200 and patched.json()["active"] is False, patched.text
    assert "no longer has access" in _everywhere(stack, key, 401)
    # DELETE keeps the row (the ledger names it) and the resource is gone for the IdP.
    assert idp.delete(f"/Users/{user_id}").status_code == 204
    gone = idp.get(f"/Users/{user_id}")
    assert gone.status_code == 404 and gone.json()["schemas"] == [
        "urn:ietf:params:scim:api:messages:2.0:Error"
    ]
    _everywhere(stack, key, 401)


def test_leaving_the_course_group_stops_the_key_on_every_gateway(stack: Stack, admin_url: str) -> None:
    idp = _idp(stack, admin_url)
    user_id, group_id = _provision(idp, "kim.dropper@uni.example")
    key = _key(admin_url, stack.institution, user_id)
    _everywhere(stack, key, 200)
    removed = idp.patch(f"/Groups/{group_id}", json={"schemas": [PATCH], "Operations": [
        {"op": "Remove", "path": f'members[value eq "{user_id}"]'}]})  # fmt: skip
    assert removed.status_code == 200 and removed.json()["members"] == [], removed.text
    _everywhere(stack, key, 401)
