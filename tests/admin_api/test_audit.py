"""The audit log: every change with who, when, what, before and after; each reader sees their scope only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.admin_api.conftest import Env

USD = 1_000_000


async def make_changes(env: Env) -> None:
    uadmin, csadmin, hadmin = await env.login("uadmin"), await env.login("csadmin"), await env.login("hadmin")
    for response in [
        await csadmin.put(
            "/api/v1/units/cs101/budget", json={"cost": {"mode": "fixed", "amount": 250 * USD}}
        ),
        await csadmin.put(
            "/api/v1/units/cs101/models", json={"models": ["llama-3.1-8b"], "default_model": "llama-3.1-8b"}
        ),
        await csadmin.post(
            "/api/v1/units/ada-research/extras",
            json={
                "id": "nih-7",
                "amount": 40 * USD,
                "valid_from": "2026-01-01",
                "valid_to": "2026-12-31",
                "chargeback": "GR-7",
            },
        ),
        await csadmin.put("/api/v1/units/cs101/members/s2", json={"role": "student"}),
        await csadmin.put("/api/v1/units/ada/admins/auditor/r1"),
        await hadmin.post("/api/v1/units", json={"id": "phil", "parent_id": "hum", "kind": "department"}),
        await uadmin.put(
            "/api/v1/providers/campus-vllm/models/tiny",
            json={"upstream": "tiny", "price": {"input_per_mtok": 1000, "output_per_mtok": 2000}},
        ),
    ]:
        assert response.status_code in (200, 201), response.text


async def page(env: Env, user: str, **params: Any) -> list[dict[str, Any]]:
    client = await env.login(user)
    response = await client.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["entries"])


async def test_each_change_is_logged_with_before_and_after(env: Env) -> None:
    await make_changes(env)
    entries = {e["action"]: e for e in await page(env, "uadmin") if e["actor"] != "org-import"}
    assert set(entries) == {"budget.update", "models.update", "extra.create", "member.add", "scope.grant",
                            "unit.create", "model.create", "sso.login"}  # fmt: skip
    budget = entries["budget.update"]
    assert budget["actor"] == "csadmin" and budget["unit_id"] == "cs101"
    assert budget["before"]["cost"]["amount"] == 200 * USD and budget["after"]["cost"]["amount"] == 250 * USD
    models = entries["models.update"]
    assert models["before"]["models"] == ["qwen2-vl-2b", "llama-3.1-8b", "gpt-4o-mini"]
    assert models["after"]["models"] == ["llama-3.1-8b"]
    assert (
        entries["extra.create"]["before"] is None and entries["extra.create"]["after"]["chargeback"] == "GR-7"
    )
    assert entries["member.add"]["after"] == {"institution_id": env.inst, "unit_id": "cs101", "user_id": "s2",
                                              "role": "student", "source": "api", "ends_at": None}  # fmt: skip
    assert entries["scope.grant"]["target"] == f"admin_scope:{env.inst}/ada/r1/auditor"
    assert entries["model.create"]["unit_id"] is None  # institution-wide: the catalog
    at = datetime.fromisoformat(budget["at"])
    assert abs(at - datetime.now(UTC)) < timedelta(minutes=5)


async def test_readers_see_only_their_scope(env: Env) -> None:
    await make_changes(env)
    auditor = {e["action"] for e in await page(env, "aud") if e["actor"] != "org-import"}
    assert auditor == {"budget.update", "models.update", "extra.create", "member.add", "scope.grant"}
    hum = {e["action"] for e in await page(env, "hadmin") if e["actor"] != "org-import"}
    assert hum == {"unit.create"}
    org_import = [e for e in await page(env, "aud") if e["actor"] == "org-import"]
    assert org_import and {e["unit_id"] for e in org_import} <= {"cs", "ada", "ada-teaching", "ada-research",
                                                                  "cs101", "cs102"}  # fmt: skip


async def test_filters_and_paging(env: Env) -> None:
    await make_changes(env)
    by_actor = await page(env, "uadmin", actor="hadmin")
    assert [e["action"] for e in by_actor] == ["unit.create"]
    by_action = await page(env, "uadmin", action="budget.")
    assert [e["unit_id"] for e in by_action] == ["cs101"]
    by_unit = await page(env, "uadmin", unit="ada-research")
    assert {e["action"] for e in by_unit if e["actor"] == "csadmin"} == {"extra.create"}
    future = await page(env, "uadmin", since=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert future == []

    client = await env.login("uadmin")
    seen: list[int] = []
    before_id = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if before_id is not None:
            params["before_id"] = before_id
        body = (await client.get("/api/v1/audit", params=params)).json()
        seen += [e["id"] for e in body["entries"]]
        before_id = body["next_before_id"]
        if before_id is None:
            break
    everything = [e["id"] for e in await page(env, "uadmin", limit=500)]
    assert seen == everything and seen == sorted(seen, reverse=True) and len(seen) > 7
