"""scim2-tester against the running server (issue 18): every check for what the ServiceProviderConfig
declares passes (patch, filter; bulk, sort, ETags and password changes are declared unsupported and are
therefore not checked as features)."""

from __future__ import annotations

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import check_server
from scim2_tester.utils import Status

from tests.scim.conftest import Server

FAILED = (Status.ERROR, Status.CRITICAL)


def test_scim2_tester_reports_no_failure(server: Server) -> None:
    token = server.new_token(server.institutions[1])
    http = httpx2.Client(
        base_url=f"{server.url}/scim/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    results = check_server(SyncSCIMClient(http))
    failures = [f"{r.status.name} {r.title}: {r.reason}" for r in results if r.status in FAILED]
    assert not failures, "\n".join(failures)
    passed = [r for r in results if r.status == Status.SUCCESS]
    assert len(passed) >= 40, [f"{r.status.name} {r.title}" for r in results]  # the checks really ran
