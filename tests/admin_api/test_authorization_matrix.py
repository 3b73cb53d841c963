"""Every admin route against every role: who is allowed, and that everyone else is refused.

The matrix is keyed by (method, path) of the app's own route table: a route
added without an entry here fails `test_matrix_covers_every_route`. Each
scenario runs on an institution of its own; refused callers go first (they
must change nothing), then each allowed caller, each with fresh objects where
the route consumes one (a key to revoke, a member to remove).

Besides the people of `ROLES`, three more callers: nobody signed in (401
everywhere but the health check), and two scripts with personal access tokens
(an institution admin's token with every scope, and a finance token with only
`usage:read export:read`), which may do what their owner may *and* their
scopes allow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import APIRoute

from admin_api.app import create_app
from admin_api.auth import ANY_CALLER, SESSION_ONLY, TOKEN_SCOPES
from admin_api.routes import ROUTERS
from core.models import Membership
from core.settings import Settings
from tests.admin_api.conftest import ROLES, Env, drop_env, make_env
from tests.admin_api.helpers import (
    add,
    fresh_extra,
    fresh_key,
    fresh_member,
    fresh_model,
    fresh_provider,
    fresh_scope,
    fresh_token,
    fresh_unit,
    fresh_user,
    get_row,
)

PUBLIC = "public"
ANON = "(nobody)"
ADMIN_PAT = "uadmin+token(all scopes)"
FINANCE_PAT = "fin+token(usage:read export:read)"
TOKEN_CALLERS = {
    ADMIN_PAT: ("uadmin", sorted(TOKEN_SCOPES)),
    FINANCE_PAT: ("fin", ["usage:read", "export:read"]),
}


@dataclass
class Call:
    path: str
    json: Any = None
    csv: str | None = None


Make = Callable[[Env], Awaitable[Call]]


def fixed(path: str, json: Any = None, csv: str | None = None) -> Make:
    async def make(_: Env) -> Call:
        return Call(path, json, csv)

    return make


@dataclass
class Scenario:
    what: str
    make: Make
    allowed: set[str]
    refused_status: int = 403


@dataclass
class Route:
    scope: str  # the token scope it needs (or PUBLIC / ANY_CALLER / SESSION_ONLY)
    scenarios: list[Scenario] = field(default_factory=list)


EVERYONE = set(ROLES)
SCOPE_HOLDERS = {"uadmin", "eadmin", "csadmin", "hadmin", "prof-ada", "fin", "aud"}
CS101_READERS = {"uadmin", "eadmin", "csadmin", "prof-ada", "fin", "aud", "ta1", "s1"}
ABOVE_CS = {"uadmin", "eadmin"}
CS1XX_ADMINS = {"uadmin", "eadmin", "csadmin", "prof-ada"}
CS101_USAGE_READERS = {"uadmin", "eadmin", "csadmin", "prof-ada", "fin", "aud"}
CS101_ROSTER_READERS = {"uadmin", "eadmin", "csadmin", "prof-ada", "aud", "ta1"}
CS102_ROSTER_WRITERS = {"uadmin", "eadmin", "csadmin", "prof-ada", "inst1"}
BUDGET = {
    "cost": {"mode": "fixed", "amount": 150_000_000},
    "member_cap": {"cost": {"mode": "fixed", "amount": 10_000_000}},
}
PRICE = {"input_per_mtok": 10_000, "output_per_mtok": 20_000}
LIMITS = {
    "limits": {"requests_per_minute": 1000},
    "member_limits": {"requests_per_minute": 20, "concurrent": 2},
}


def fresh_under(parent: str, suffix: str = "", json: Any = None) -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/units/{await fresh_unit(env, parent)}{suffix}", json)

    return make


def new_unit_under(parent: str) -> Make:
    async def make(env: Env) -> Call:
        return Call(
            "/api/v1/units", {"id": env.fresh("new"), "parent_id": parent, "kind": "course", "name": "New"}
        )

    return make


def new_extra(unit: str) -> Make:
    async def make(env: Env) -> Call:
        body = {
            "id": env.fresh("grant"),
            "amount": 1_000_000,
            "valid_from": "2026-01-01",
            "valid_to": "2026-12-31",
        }
        return Call(f"/api/v1/units/{unit}/extras", body)

    return make


def existing_extra(unit: str) -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/units/{unit}/extras/{await fresh_extra(env, unit)}")

    return make


def new_member(unit: str, role: str) -> Make:
    async def make(env: Env) -> Call:
        body = {"role": role, "profile": {"email": "new@stateu.edu", "name": "New Person"}}
        return Call(f"/api/v1/units/{unit}/members/{env.fresh('newuser')}", body)

    return make


def existing_member(unit: str) -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/units/{unit}/members/{await fresh_member(env, unit)}")

    return make


def roster_csv(unit: str) -> Make:
    async def make(env: Env) -> Call:
        a, b = env.fresh("csv"), env.fresh("csv")
        return Call(
            f"/api/v1/units/{unit}/members/import", csv=f"user,role,email\n{a},student,{a}@x.edu\n{b},ta,\n"
        )

    return make


def bursar_enrolled(unit: str) -> Make:
    """A key for the bursar (finance on eng) whom an admin put on a course roster: not an instructor's to issue."""

    async def make(env: Env) -> Call:
        if await get_row(env, Membership, env.inst, unit, "fin") is None:
            await add(env, Membership(institution_id=env.inst, unit_id=unit, user_id="fin", role="student"))
        return Call(f"/api/v1/units/{unit}/keys", {"user_id": "fin"})

    return make


def grant(unit: str, role: str) -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/units/{unit}/admins/{role}/{await fresh_user(env)}")

    return make


def existing_grant(unit: str, role: str) -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/units/{unit}/admins/{role}/{await fresh_scope(env, unit, role)}")

    return make


def new_provider() -> Make:
    async def make(env: Env) -> Call:
        return Call(
            f"/api/v1/providers/{env.fresh('prov')}", {"type": "vllm", "base_url": "http://127.0.0.1:9/v1"}
        )

    return make


def existing_provider() -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/providers/{await fresh_provider(env)}")

    return make


def new_model() -> Make:
    async def make(env: Env) -> Call:
        return Call(
            f"/api/v1/providers/campus-vllm/models/{env.fresh('m')}", {"upstream": "x/y", "price": PRICE}
        )

    return make


def existing_model() -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/providers/campus-vllm/models/{await fresh_model(env)}")

    return make


def own_key_of(user: str, unit: str) -> Make:
    async def make(env: Env) -> Call:
        kid, _ = await fresh_key(env, user, unit)
        return Call(f"/api/v1/keys/{kid}")

    return make


def unit_key_of(user: str, unit: str) -> Make:
    async def make(env: Env) -> Call:
        kid, _ = await fresh_key(env, user, unit)
        return Call(f"/api/v1/units/{unit}/keys/{kid}")

    return make


def token_of(user: str) -> Make:
    async def make(env: Env) -> Call:
        return Call(f"/api/v1/tokens/{await fresh_token(env, user)}")

    return make


V1 = "/api/v1"
MATRIX: dict[tuple[str, str], Route] = {
    ("GET", f"{V1}/healthz"): Route(PUBLIC, [Scenario("health", fixed(f"{V1}/healthz"), EVERYONE)]),
    ("GET", f"{V1}/me"): Route(ANY_CALLER, [Scenario("me", fixed(f"{V1}/me"), EVERYONE)]),
    ("GET", f"{V1}/units/tree"): Route("org:read", [Scenario("tree", fixed(f"{V1}/units/tree"), EVERYONE)]),
    ("GET", f"{V1}/units/{{unit_id}}"): Route("org:read", [
        Scenario("a sibling college", fixed(f"{V1}/units/hum"), {"uadmin", "hadmin"}),
        Scenario("a department's parent", fixed(f"{V1}/units/eng"), {"uadmin", "eadmin", "fin"}),
        Scenario("a course", fixed(f"{V1}/units/cs101"), CS101_READERS),
    ]),
    ("PATCH", f"{V1}/units/{{unit_id}}"): Route("org:write", [
        Scenario("rename own department", fixed(f"{V1}/units/cs", {"name": "CS"}), ABOVE_CS),
        Scenario("rename a course", fixed(f"{V1}/units/cs101", {"name": "Intro"}), CS1XX_ADMINS),
        Scenario("rename a sibling college", fixed(f"{V1}/units/hum", {"name": "Humanities"}), {"uadmin"}),
    ]),
    ("POST", f"{V1}/units"): Route("org:write", [
        Scenario("create under cs", new_unit_under("cs"), {"uadmin", "eadmin", "csadmin"}),
        Scenario("create under hum", new_unit_under("hum"), {"uadmin", "hadmin"}),
    ]),
    ("POST", f"{V1}/units/{{unit_id}}/move"): Route("org:write", [
        Scenario("within cs", fresh_under("cs", "/move", {"parent_id": "ada"}), {"uadmin", "eadmin", "csadmin"}),
        Scenario("from hum into eng", fresh_under("hum", "/move", {"parent_id": "eng"}), {"uadmin"}),
    ]),
    ("POST", f"{V1}/units/{{unit_id}}/archive"): Route("org:write", [
        Scenario("own department", fixed(f"{V1}/units/cs/archive"), ABOVE_CS),
        Scenario("a unit under cs", fresh_under("cs", "/archive"), {"uadmin", "eadmin", "csadmin"}),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/budget"): Route("org:read", [
        Scenario("a department", fixed(f"{V1}/units/cs/budget"), {"uadmin", "eadmin", "csadmin", "fin", "aud"}),
        Scenario("a sibling college", fixed(f"{V1}/units/hum/budget"), {"uadmin", "hadmin"}),
    ]),
    ("PUT", f"{V1}/units/{{unit_id}}/budget"): Route("org:write", [
        Scenario("own department's cap", fixed(f"{V1}/units/cs/budget", BUDGET), ABOVE_CS),
        Scenario("a course's cap", fixed(f"{V1}/units/cs101/budget", BUDGET), CS1XX_ADMINS),
        Scenario("the root's cap", fixed(f"{V1}/units/stateu/budget", BUDGET), {"uadmin"}),
    ]),
    ("POST", f"{V1}/units/{{unit_id}}/budget/preview"): Route("org:read", [
        Scenario("own department's cap", fixed(f"{V1}/units/cs/budget/preview", BUDGET), ABOVE_CS),
        Scenario("a course's cap", fixed(f"{V1}/units/cs101/budget/preview", BUDGET), CS1XX_ADMINS),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/limits"): Route("org:read", [
        Scenario("a course", fixed(f"{V1}/units/cs101/limits"), CS101_READERS),
        Scenario("a sibling college", fixed(f"{V1}/units/hum/limits"), {"uadmin", "hadmin"}),
    ]),
    ("PUT", f"{V1}/units/{{unit_id}}/limits"): Route("org:write", [
        Scenario("a course's limits", fixed(f"{V1}/units/cs101/limits", LIMITS), CS1XX_ADMINS),
        Scenario("own department's limits", fixed(f"{V1}/units/cs/limits", LIMITS), ABOVE_CS),
        Scenario("the root's limits", fixed(f"{V1}/units/stateu/limits", LIMITS), {"uadmin"}),
    ]),
    ("GET", f"{V1}/fair-share"): Route("org:read", [
        Scenario("weights", fixed(f"{V1}/fair-share"), SCOPE_HOLDERS),
    ]),
    ("PUT", f"{V1}/fair-share"): Route("org:write", [
        Scenario("weights", fixed(f"{V1}/fair-share", {"weights": {"course": 3, "research": 1}}), {"uadmin"}),
    ]),
    ("GET", f"{V1}/limits/live"): Route("org:read", [
        Scenario("a course", fixed(f"{V1}/limits/live?unit=cs101"), CS101_READERS),
        Scenario("a member in a course", fixed(f"{V1}/limits/live?unit=cs101&user=s1"), CS101_USAGE_READERS),
        Scenario("someone outside the course", fixed(f"{V1}/limits/live?unit=cs102&user=r1"), set()),
        Scenario("the catalog", fixed(f"{V1}/limits/live"), SCOPE_HOLDERS),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/extras"): Route("org:read", [
        Scenario("research unit", fixed(f"{V1}/units/ada-research/extras"),
                 {"uadmin", "eadmin", "csadmin", "prof-ada", "fin", "aud", "r1"}),
    ]),
    ("POST", f"{V1}/units/{{unit_id}}/extras"): Route("org:write", [
        Scenario("below own faculty unit", new_extra("ada-research"), CS1XX_ADMINS),
        Scenario("own faculty unit", new_extra("ada"), {"uadmin", "eadmin", "csadmin"}),
    ]),
    ("PUT", f"{V1}/units/{{unit_id}}/extras/{{extra_id}}"): Route("org:write", [
        Scenario("nsf grant", fixed(f"{V1}/units/ada-research/extras/nsf-123", {"amount": 300_000_000,
                 "valid_from": "2026-09-01", "valid_to": "2027-08-31"}), CS1XX_ADMINS),
    ]),
    ("DELETE", f"{V1}/units/{{unit_id}}/extras/{{extra_id}}"): Route("org:write", [
        Scenario("an extra of ada-research", existing_extra("ada-research"), CS1XX_ADMINS),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/members"): Route("org:read", [
        Scenario("cs101 roster", fixed(f"{V1}/units/cs101/members"), CS101_ROSTER_READERS),
        Scenario("cs102 roster", fixed(f"{V1}/units/cs102/members"),
                 {"uadmin", "eadmin", "csadmin", "prof-ada", "aud", "inst1"}),
    ]),
    ("PUT", f"{V1}/units/{{unit_id}}/members/{{user_id}}"): Route("org:write", [
        Scenario("add a student", new_member("cs102", "student"), CS102_ROSTER_WRITERS),
        Scenario("add an instructor", new_member("cs102", "instructor"), CS1XX_ADMINS),
        Scenario("enrol the bursar", fixed(f"{V1}/units/cs102/members/fin", {"role": "student"}), CS1XX_ADMINS),
    ]),
    ("DELETE", f"{V1}/units/{{unit_id}}/members/{{user_id}}"): Route("org:write", [
        Scenario("remove a student", existing_member("cs102"), CS102_ROSTER_WRITERS),
    ]),
    ("POST", f"{V1}/units/{{unit_id}}/members/import"): Route("org:write", [
        Scenario("course CSV", roster_csv("cs102"), CS102_ROSTER_WRITERS),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/people"): Route("org:read", [
        Scenario("cs101 people", fixed(f"{V1}/units/cs101/people"), CS101_ROSTER_READERS),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/leavers"): Route("usage:read", [
        Scenario("cs leavers", fixed(f"{V1}/units/cs/leavers"), {"uadmin", "eadmin", "csadmin", "fin", "aud"}),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/admins"): Route("org:read", [
        Scenario("cs admins", fixed(f"{V1}/units/cs/admins"), {"uadmin", "eadmin", "csadmin", "aud"}),
    ]),
    ("PUT", f"{V1}/units/{{unit_id}}/admins/{{role}}/{{user_id}}"): Route("org:write", [
        Scenario("an admin for own department", grant("cs", "admin"), ABOVE_CS),
        Scenario("an auditor for a research unit", grant("ada-research", "auditor"), CS1XX_ADMINS),
    ]),
    ("DELETE", f"{V1}/units/{{unit_id}}/admins/{{role}}/{{user_id}}"): Route("org:write", [
        Scenario("a finance officer of own department", existing_grant("cs", "finance"), ABOVE_CS),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/models"): Route("org:read", [
        Scenario("a course", fixed(f"{V1}/units/cs101/models"), CS101_READERS),
    ]),
    ("PUT", f"{V1}/units/{{unit_id}}/models"): Route("org:write", [
        Scenario("a course", fixed(f"{V1}/units/cs101/models", {"models": ["llama-3.1-8b", "gpt-4o-mini"],
                 "default_model": "llama-3.1-8b"}), CS1XX_ADMINS),
        Scenario("own college", fixed(f"{V1}/units/hum/models", {"models": ["llama-3.1-8b"]}), {"uadmin"}),
    ]),
    ("GET", f"{V1}/providers"): Route("org:read", [Scenario("providers", fixed(f"{V1}/providers"), SCOPE_HOLDERS)]),
    ("GET", f"{V1}/models"): Route("org:read", [Scenario("catalog", fixed(f"{V1}/models"), SCOPE_HOLDERS)]),
    ("PUT", f"{V1}/providers/{{provider_id}}"): Route("org:write", [Scenario("new", new_provider(), {"uadmin"})]),
    ("DELETE", f"{V1}/providers/{{provider_id}}"): Route("org:write", [
        Scenario("unused", existing_provider(), {"uadmin"}),
    ]),
    ("PUT", f"{V1}/providers/{{provider_id}}/models/{{model_id}}"): Route("org:write", [
        Scenario("new priced model", new_model(), {"uadmin"}),
    ]),
    ("DELETE", f"{V1}/providers/{{provider_id}}/models/{{model_id}}"): Route("org:write", [
        Scenario("unused model", existing_model(), {"uadmin"}),
    ]),
    ("GET", f"{V1}/keys"): Route("keys:read", [Scenario("own keys", fixed(f"{V1}/keys"), EVERYONE)]),
    ("POST", f"{V1}/keys"): Route("keys:write", [
        Scenario("for cs101", fixed(f"{V1}/keys", {"unit_id": "cs101", "name": "laptop"}), {"prof-ada", "ta1", "s1"}),
    ]),
    ("DELETE", f"{V1}/keys/{{key_id}}"): Route("keys:write", [
        Scenario("s1's own key", own_key_of("s1", "cs101"), {"s1"}, refused_status=404),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/keys"): Route("keys:read", [
        Scenario("cs101 keys", fixed(f"{V1}/units/cs101/keys"), {"uadmin", "eadmin", "csadmin", "prof-ada", "aud"}),
    ]),
    ("POST", f"{V1}/units/{{unit_id}}/keys"): Route("keys:write", [
        Scenario("for a cs102 student", fixed(f"{V1}/units/cs102/keys", {"user_id": "s2"}), CS102_ROSTER_WRITERS),
        Scenario("for the bursar on cs102's roster", bursar_enrolled("cs102"), CS1XX_ADMINS),
    ]),
    ("DELETE", f"{V1}/units/{{unit_id}}/keys/{{key_id}}"): Route("keys:write", [
        Scenario("a cs102 student's key", unit_key_of("s2", "cs102"), CS102_ROSTER_WRITERS),
    ]),
    ("GET", f"{V1}/tokens/scopes"): Route(SESSION_ONLY, [Scenario("scopes", fixed(f"{V1}/tokens/scopes"), EVERYONE)]),
    ("GET", f"{V1}/tokens"): Route(SESSION_ONLY, [Scenario("own tokens", fixed(f"{V1}/tokens"), EVERYONE)]),
    ("POST", f"{V1}/tokens"): Route(SESSION_ONLY, [
        Scenario("create", fixed(f"{V1}/tokens", {"name": "x", "scopes": ["usage:read"]}), EVERYONE),
    ]),
    ("DELETE", f"{V1}/tokens/{{token_id}}"): Route(SESSION_ONLY, [
        Scenario("fin's token", token_of("fin"), {"fin"}, refused_status=404),
    ]),
    ("GET", f"{V1}/explain"): Route("usage:read", [
        Scenario("s1 in cs101", fixed(f"{V1}/explain?unit=cs101&user=s1"),
                 {"uadmin", "eadmin", "csadmin", "prof-ada", "fin", "aud", "s1"}),
        Scenario("s2 in cs102", fixed(f"{V1}/explain?unit=cs102&user=s2"),
                 {"uadmin", "eadmin", "csadmin", "prof-ada", "fin", "aud", "inst1", "s2"}),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/usage"): Route("usage:read", [
        Scenario("a course", fixed(f"{V1}/units/cs101/usage?group_by=user"), CS101_USAGE_READERS),
        Scenario("another course", fixed(f"{V1}/units/cs102/usage"), CS101_USAGE_READERS | {"inst1"}),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/usage/top-users"): Route("usage:read", [
        Scenario("a course", fixed(f"{V1}/units/cs101/usage/top-users"), CS101_USAGE_READERS),
    ]),
    ("GET", f"{V1}/units/{{unit_id}}/usage/forecast"): Route("usage:read", [
        Scenario("a department", fixed(f"{V1}/units/cs/usage/forecast"), {"uadmin", "eadmin", "csadmin", "fin", "aud"}),
    ]),
    ("GET", f"{V1}/me/usage"): Route("usage:read", [Scenario("own usage", fixed(f"{V1}/me/usage"), EVERYONE)]),
    ("GET", f"{V1}/units/{{unit_id}}/export"): Route("export:read", [
        Scenario("a department", fixed(f"{V1}/units/cs/export?period=2026-10&format=focus"),
                 {"uadmin", "eadmin", "csadmin", "fin", "aud"}),
        Scenario("the institution", fixed(f"{V1}/units/stateu/export?period=2026-10"), {"uadmin"}),
    ]),
    ("GET", f"{V1}/audit"): Route("audit:read", [
        Scenario("of cs", fixed(f"{V1}/audit?unit=cs"), {"uadmin", "eadmin", "csadmin", "aud"}),
        Scenario("of one's scope", fixed(f"{V1}/audit"), {"uadmin", "eadmin", "csadmin", "hadmin", "prof-ada", "aud"}),
    ]),
}  # fmt: skip


def api_routes() -> set[tuple[str, str]]:
    """Every (method, path) the app serves under /api/v1: its routers' tables and its published schema."""
    mounted = {
        (m, V1 + r.path.replace("{model_id:path}", "{model_id}"))
        for router in ROUTERS
        for r in router.routes
        if isinstance(r, APIRoute)
        for m in r.methods
    }
    schema = create_app(Settings(), dev_login=True).openapi()["paths"]
    published = {(m.upper(), p) for p, ops in schema.items() if p.startswith(V1) for m in ops}
    assert mounted == published, "every admin route is in the OpenAPI schema"
    return mounted


def test_matrix_covers_every_route() -> None:
    routes = api_routes()
    assert sorted(routes - MATRIX.keys()) == [], "routes without an authorization matrix entry"
    assert sorted(MATRIX.keys() - routes) == [], "matrix entries for routes that do not exist"


def expected(route: Route, scenario: Scenario, caller: str) -> int | None:
    """None: allowed (any 2xx); otherwise the exact refusal status."""
    if route.scope == PUBLIC:
        return None
    if caller == ANON:
        return 401
    if caller in TOKEN_CALLERS:
        owner, scopes = TOKEN_CALLERS[caller]
        if route.scope != ANY_CALLER and route.scope not in scopes:
            return 403
        caller = owner
    return None if caller in scenario.allowed else scenario.refused_status


CASES = [
    pytest.param(method, path, i, id=f"{method} {path.removeprefix(V1)} [{s.what}]")
    for (method, path), route in MATRIX.items()
    for i, s in enumerate(route.scenarios)
]


@pytest.mark.parametrize(("method", "path", "index"), CASES)
async def test_authorization(settings: Settings, method: str, path: str, index: int) -> None:
    route = MATRIX[(method, path)]
    scenario = route.scenarios[index]
    env = await make_env(settings)
    try:
        callers = {name: await env.login(name) for name in ROLES}
        callers[ANON] = env.anonymous()
        env.clients[ANON] = callers[ANON]
        for name, (owner, scopes) in TOKEN_CALLERS.items():
            callers[name] = await env.token_client(owner, scopes)
        order = sorted(callers, key=lambda c: expected(route, scenario, c) is None)  # refusals first
        wrong = []
        for name in order:
            call = await scenario.make(env)
            if call.csv is not None:
                response = await callers[name].request(method, call.path, content=call.csv,
                                                       headers={"Content-Type": "text/csv"})  # fmt: skip
            else:
                response = await callers[name].request(method, call.path, json=call.json)
            want = expected(route, scenario, name)
            ok = 200 <= response.status_code < 300 if want is None else response.status_code == want
            if not ok:
                wrong.append(
                    f"{name}: got {response.status_code} want {want or '2xx'}: {response.text[:300]}"
                )
            elif want is not None:
                assert set(response.json()["error"]) == {"code", "message", "details"}, response.text
        assert wrong == []
    finally:
        await drop_env(env)
