"""Property-based run of the published OpenAPI schema (schemathesis) against a live admin API: no 500s.

The server runs for real (uvicorn in a thread, real PostgreSQL and Redis).
Every role of the institution calls every operation: each person of `ROLES`
signed in through SSO (CSRF token included), nobody signed in, and scripts
with personal access tokens (all scopes; finance's two), a few examples per
operation each, so the refusal paths of every route are fuzzed too. Then the
institution admin, whom every route lets past authentication, calls each
operation many more times. Path and query
parameters are drawn half from the schema and half from the ids that exist in
the institution, so generated requests also reach the code behind the 404s:
archiving real units, moving them, rewriting real budgets, deleting real
extras and providers. Whatever the order, nothing may answer 5xx.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from admin_api.app import create_app
from admin_api.auth import TOKEN_SCOPES
from cli.services.process import free_port
from core.db import make_async_engine, session_factory
from core.settings import Settings
from quota import QuotaEngine
from quota.sources import load_spec
from tests.admin_api.conftest import ROLES, import_institution

EXAMPLES = 30  # per operation, positive and negative data mixed
ROLE_EXAMPLES = 2  # per operation for each of the other callers: bounded, it is 15 callers
TOKEN_CALLERS = {
    "uadmin+token": ("uadmin", sorted(TOKEN_SCOPES)),
    "fin+token": ("fin", ["export:read", "usage:read"]),
}
ANON = "(nobody)"
KNOWN: dict[str, list[str]] = {
    "unit_id": ["stateu", "eng", "cs", "ada", "ada-teaching", "cs101", "cs102", "ada-research", "hum"],
    "unit": ["stateu", "cs", "cs101", "ada-research"],
    "user_id": ["s1", "s2", "prof-ada", "csadmin", "r1"],
    "user": ["s1", "r1", "prof-ada"],
    "parent_id": ["cs", "ada-teaching", "hum"],
    "extra_id": ["nsf-123"],
    "provider_id": ["campus-vllm", "openai"],
    "model_id": ["qwen2-vl-2b", "gpt-4o", "llama-3.1-8b"],
}


@dataclass
class Live:
    url: str
    headers: dict[str, str]
    callers: dict[str, dict[str, str]]  # every caller's headers, by role


@pytest.fixture(scope="module")
def live(pg_url: str, redis_url: str, kafka_bootstrap: str) -> Iterator[Live]:
    inst = f"fz{uuid.uuid4().hex[:10]}"

    async def setup() -> None:
        """The institution imported and its budgets compiled into Redis, as the CLI bootstraps one."""
        engine = make_async_engine(pg_url, pool_size=1)
        quota = QuotaEngine.from_url(redis_url)
        try:
            await import_institution(session_factory(engine), inst)
            async with session_factory(engine)() as session:
                await quota.compile(await load_spec(session, inst))
        finally:
            await quota.close()
            await engine.dispose()

    asyncio.run(setup())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=pg_url, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, public_base_url=url
    )
    app = create_app(settings, dev_login=True)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "admin API did not start"
        time.sleep(0.05)
    try:
        callers = {user: signed_in(url, inst, user) for user in ROLES}
        for name, (owner, scopes) in TOKEN_CALLERS.items():
            made = requests.post(
                f"{url}/api/v1/tokens", json={"scopes": scopes}, headers=callers[owner], timeout=30
            )
            assert made.status_code == 201, made.text
            callers[name] = {"Authorization": f"Bearer {made.json()['token']}"}
        callers[ANON] = {}
        yield Live(url, callers["uadmin"], callers)
    finally:
        server.should_exit = True
        thread.join(30)


def signed_in(url: str, inst: str, user: str) -> dict[str, str]:
    """Headers of a browser signed in as `user` (session cookie, and the CSRF token echoed)."""
    login = requests.get(f"{url}/auth/dev/login", params={"user": user, "institution": inst},
                         allow_redirects=False, timeout=30)  # fmt: skip
    assert login.status_code == 303, login.text
    cookies = login.cookies.get_dict()
    return {
        "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
        "X-CSRF-Token": cookies["eduaiq_csrf"],
    }


def load_schema(live: Live) -> Any:
    schema = schemathesis.openapi.from_url(f"{live.url}/api/v1/openapi.json").include(path_regex=r"^/api/v1/")

    def mixed(values: Any) -> st.SearchStrategy[Any]:
        if not isinstance(values, dict):
            return st.just(values)
        return st.fixed_dictionaries(
            {k: st.sampled_from([v, *KNOWN[k]]) if k in KNOWN else st.just(v) for k, v in values.items()}
        )

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: Any) -> st.SearchStrategy[Any]:
        return mixed(path_parameters)

    @schema.hook
    def flatmap_query(context: Any, query: Any) -> st.SearchStrategy[Any]:
        return mixed(query)

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
        return mixed(body)

    return schema


def check(live: Live, case: Any, headers: dict[str, str] | None = None) -> None:
    response = case.call(base_url=live.url, headers=live.headers if headers is None else headers, timeout=30)
    where = f"{case.method} {case.formatted_path} {case.query or ''}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    content_type = " ".join(response.headers.get("content-type", []))
    if response.status_code >= 400 and content_type.startswith("application/json"):
        assert set(response.json()["error"]) == {"code", "message", "details"}, (
            f"{where}: {response.text[:500]}"
        )


def fuzz(live: Live, headers: dict[str, str], examples: int) -> list[str]:
    """Every operation, `examples` cases each (positive and negative data mixed); the failures."""
    schema = load_schema(live)
    # Archiving and deleting real objects last, so the other operations meet a live tree first.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: op.method.upper() == "DELETE" or op.path.endswith(("/archive", "/move")),
    )
    assert len(operations) > 40
    failures: list[str] = []
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE, hooks=schema.hooks),
            operation.as_strategy(GenerationMode.NEGATIVE, hooks=schema.hooks),
        )

        @given(case=strategy)
        @settings(
            max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def run(case: Any) -> None:
            check(live, case, headers)

        try:
            run()
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    return failures


# Before the admin's run below, which archives and deletes what the others would still call on.
@pytest.mark.parametrize("caller", [*sorted(set(ROLES) - {"uadmin"}), *TOKEN_CALLERS, ANON])
def test_no_server_errors_for_any_role(live: Live, caller: str) -> None:
    assert fuzz(live, live.callers[caller], ROLE_EXAMPLES) == []


def test_no_server_errors(live: Live) -> None:
    assert fuzz(live, live.headers, EXAMPLES) == []
