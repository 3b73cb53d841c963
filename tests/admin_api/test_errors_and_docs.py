"""The error shape, statuses for user mistakes, the published schema and docs, and the health check."""

from __future__ import annotations

from cli.services.process import free_port
from core.settings import Settings
from tests.admin_api.conftest import Env, drop_env, make_env


def assert_error(body: dict[str, object], code: str) -> None:
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"} and error["code"] == code


async def test_user_mistakes_are_4xx_in_one_shape(env: Env) -> None:
    admin = await env.login("uadmin")
    unknown_route = await admin.get("/api/v1/nothing-here")
    assert unknown_route.status_code == 404
    assert_error(unknown_route.json(), "not_found")
    wrong_method = await admin.post("/api/v1/me")
    assert wrong_method.status_code == 405
    assert_error(wrong_method.json(), "method_not_allowed")
    not_json = await admin.post(
        "/api/v1/units", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    missing_field = await admin.post("/api/v1/units", json={"id": "x"})
    assert missing_field.status_code == 422
    assert_error(missing_field.json(), "invalid")
    assert {p["path"] for p in missing_field.json()["error"]["details"]["problems"]} == {
        "body.parent_id",
        "body.kind",
    }
    unknown_unit = await admin.get("/api/v1/units/no-such-unit")
    assert unknown_unit.status_code == 404
    assert_error(unknown_unit.json(), "unit_not_found")
    nul = await admin.patch("/api/v1/units/cs", json={"name": "CS\u0000"})
    assert nul.status_code == 422
    extra_field = await admin.put(
        "/api/v1/units/cs/budget", json={"cost": {"mode": "inherit"}, "surprise": 1}
    )
    assert extra_field.status_code == 422
    nul_csv = await admin.post("/api/v1/units/cs101/members/import", content="user,name\nz9,Zed\x00\n",
                               headers={"Content-Type": "text/csv"})  # fmt: skip
    assert nul_csv.status_code == 422


async def test_schema_docs_and_health_are_served(env: Env) -> None:
    async with env.anonymous() as client:
        schema = await client.get("/api/v1/openapi.json")
        assert schema.status_code == 200
        paths = schema.json()["paths"]
        assert "/api/v1/units/{unit_id}/budget/preview" in paths and "/api/v1/healthz" in paths
        ids = [op["operationId"] for ops in paths.values() for op in ops.values() if "operationId" in op]
        assert len(ids) == len(set(ids)), "every operation has its own id (client generators need it)"
        assert (await client.get("/api/docs")).status_code == 200
        health = await client.get("/api/v1/healthz")
        assert health.json() == {"status": "ok", "database": "ok", "redis": "ok"}


async def test_an_edit_that_needs_an_unreadable_ledger_is_503_not_500(settings: Settings) -> None:
    """Found by the schema fuzz: with the budget counters gone from Redis and the broker away, an edit
    cannot rebuild them from the ledger (it could not vouch for it); that is the system's state, and the
    answer is 503 with Retry-After in the error shape, not an internal error."""
    env = await make_env(settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"}))
    try:
        redis = env.state.redis
        keys = [k async for k in redis.scan_iter(match=f"eq:{{{env.inst}}}:*")]
        await redis.delete(*keys)
        await redis.srem("eq:quota:institutions", env.inst)  # type: ignore[misc]
        admin = await env.login("uadmin")
        budget = {"cost": {"mode": "fixed", "amount": 150_000_000}}
        answer = await admin.put("/api/v1/units/cs101/budget", json=budget)
        assert answer.status_code == 503, answer.text
        assert_error(answer.json(), "unavailable")
        assert int(answer.headers["retry-after"]) > 0
    finally:
        await drop_env(env)
