"""Units through the API: create, rename, move, archive, and the tree a person sees."""

from __future__ import annotations

from typing import Any

from core.models import Unit
from tests.admin_api.conftest import Env
from tests.admin_api.helpers import audit_entries, get_row


def ids(node: dict[str, Any]) -> list[str]:
    return [node["id"], *(i for child in node["children"] for i in ids(child))]


async def test_create_rename_move_archive_a_unit(env: Env) -> None:
    admin = await env.login("csadmin")

    created = await admin.post("/api/v1/units", json={"id": "cs201", "parent_id": "cs", "kind": "course"})
    assert created.status_code == 201, created.text
    assert created.json()["parent_id"] == "cs"
    assert created.json()["effective_models"] == ["qwen2-vl-2b", "llama-3.1-8b", "gpt-4o", "gpt-4o-mini"]

    renamed = await admin.patch("/api/v1/units/cs201", json={"name": "CS201 Algorithms"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "CS201 Algorithms"

    moved = await admin.post("/api/v1/units/cs201/move", json={"parent_id": "ada-teaching"})
    assert moved.status_code == 200, moved.text
    row = await get_row(env, Unit, env.inst, "cs201")
    assert row.parent_id == "ada-teaching" and row.name == "CS201 Algorithms"

    archived = await admin.post("/api/v1/units/cs201/archive")
    assert archived.status_code == 200 and archived.json()["archived"] is True
    assert (await get_row(env, Unit, env.inst, "cs201")).archived

    tree = (await admin.get("/api/v1/units/tree")).json()
    assert "cs201" not in ids(tree["roots"][0])
    with_archived = (await admin.get("/api/v1/units/tree", params={"include_archived": "true"})).json()
    assert "cs201" in ids(with_archived["roots"][0])

    actions = [(e.action, e.target) for e in await audit_entries(env)]
    target = f"unit:{env.inst}/cs201"
    assert actions == [
        ("unit.create", target),
        ("unit.update", target),
        ("unit.move", target),
        ("unit.archive", target),
    ]


async def test_archiving_takes_the_subtree_and_refuses_the_root(env: Env) -> None:
    admin = await env.login("uadmin")
    assert (await admin.post("/api/v1/units/ada-teaching/archive")).status_code == 200
    for uid in ("ada-teaching", "cs101", "cs102"):
        assert (await get_row(env, Unit, env.inst, uid)).archived, uid
    assert not (await get_row(env, Unit, env.inst, "ada-research")).archived
    root = await admin.post("/api/v1/units/stateu/archive")
    assert root.status_code == 409 and root.json()["error"]["code"] == "root_unit"
    # an archived course's keys are refused by the gateway; here: no new keys and no roster changes
    s1 = await env.login("s1")
    key = await s1.post("/api/v1/keys", json={"unit_id": "cs101"})
    assert key.status_code == 409 and key.json()["error"]["code"] == "unit_archived"


async def test_moves_that_would_break_the_tree_are_refused(env: Env) -> None:
    admin = await env.login("uadmin")
    cycle = await admin.post("/api/v1/units/cs/move", json={"parent_id": "cs101"})
    assert cycle.status_code == 409 and cycle.json()["error"]["code"] == "move_cycle"
    # cs101 may use gpt-4o-mini; hum does not offer qwen2-vl-2b, which cs101 lists
    policy = await admin.post("/api/v1/units/cs101/move", json={"parent_id": "hum"})
    assert policy.status_code == 409 and policy.json()["error"]["code"] == "model_policy"
    assert {p["unit"] for p in policy.json()["error"]["details"]["problems"]} == {"cs101"}
    missing = await admin.post("/api/v1/units/cs101/move", json={"parent_id": "nowhere"})
    assert missing.status_code == 404
    assert (await get_row(env, Unit, env.inst, "cs101")).parent_id == "ada-teaching"


async def test_unit_ids_are_unique_and_parents_must_be_live(env: Env) -> None:
    admin = await env.login("uadmin")
    dup = await admin.post("/api/v1/units", json={"id": "cs101", "parent_id": "cs", "kind": "course"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "unit_exists"
    bad = await admin.post("/api/v1/units", json={"id": "has space", "parent_id": "cs", "kind": "course"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["problems"][0]["path"] == "body.id"
    await admin.post("/api/v1/units/cs102/archive")
    under_archived = await admin.post(
        "/api/v1/units", json={"id": "x1", "parent_id": "cs102", "kind": "course"}
    )
    assert under_archived.status_code == 409


async def test_tree_shows_each_person_their_part_with_caps(env: Env) -> None:
    admin = await env.login("csadmin")
    tree = (await admin.get("/api/v1/units/tree")).json()
    assert [r["id"] for r in tree["roots"]] == ["cs"]
    cs = tree["roots"][0]
    assert ids(cs) == ["cs", "ada", "ada-teaching", "cs101", "cs102", "ada-research"]
    by_id: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any]) -> None:
        by_id[node["id"]] = node
        for child in node["children"]:
            walk(child)

    walk(cs)
    # the worked example: cs fixed 1000, ada-teaching 30% of cs (ada inherits), cs101 fixed 200 with member cap 20
    assert by_id["cs"]["numbers"]["metrics"]["cost"]["cap"] == 1_000_000_000
    assert by_id["ada"]["numbers"]["metrics"]["cost"]["cap"] is None
    assert by_id["ada-teaching"]["numbers"]["metrics"]["cost"]["cap"] == 300_000_000
    assert by_id["cs101"]["numbers"]["metrics"]["cost"]["member_cap"] == 20_000_000
    assert by_id["ada-research"]["numbers"]["extras"][0]["id"] == "nsf-123"
    assert tree["compiled"] is True and by_id["cs101"]["numbers"]["metrics"]["cost"]["used"] == 0

    student = await env.login("s1")
    mine = (await student.get("/api/v1/units/tree")).json()
    assert [r["id"] for r in mine["roots"]] == ["cs101"]


async def test_tree_warns_when_children_are_over_allocated(env: Env) -> None:
    admin = await env.login("uadmin")
    eng = {"cost": {"mode": "percent", "percent": "40"}}
    hum = {"cost": {"mode": "percent", "percent": "70"}}
    assert (await admin.put("/api/v1/units/eng/budget", json=eng)).status_code == 200
    assert (await admin.put("/api/v1/units/hum/budget", json=hum)).status_code == 200
    warnings = (await admin.get("/api/v1/units/tree")).json()["warnings"]
    assert [(w["code"], w["unit"], w["cap"], w["amount"]) for w in warnings] == [
        ("over_allocated", "stateu", 10_000_000_000, 11_000_000_000)
    ]
