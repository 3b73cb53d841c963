"""Any valid institution file survives import -> export -> import with no changes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin_api.orgfile import apply_org, export_org, parse_document
from core.db import make_async_engine, session_factory

MODELS = ["m-a", "m-b", "m-c"]


@st.composite
def unit_trees(draw: st.DrawFn, depth: int = 0, counter: list[int] | None = None) -> dict[str, Any]:
    counter = counter if counter is not None else [0]
    counter[0] += 1
    unit: dict[str, Any] = {
        "id": f"u{counter[0]}",
        "kind": draw(st.sampled_from(["college", "course", "research"])),
    }
    budget: dict[str, Any] = {}
    for metric in ("cost", "tokens"):
        mode = draw(st.sampled_from(["fixed", "percent", None]))
        if mode == "fixed":
            budget[metric] = {"fixed": draw(st.integers(0, 10**6))}
        elif mode == "percent":
            budget[metric] = {"percent": draw(st.sampled_from([0, 12.5, 40, 100]))}
    if draw(st.booleans()):
        budget["period"] = draw(st.sampled_from(["day", "week", "month", "year", "none"]))
    if budget:
        unit["budget"] = budget
    if draw(st.booleans()):
        unit["member_cap"] = {"cost": draw(st.sampled_from([{"fixed": 5}, {"fair_share": 1.5}]))}
    if depth < 3:
        unit["children"] = [draw(unit_trees(depth + 1, counter)) for _ in range(draw(st.integers(0, 2)))]
    return unit


@st.composite
def org_files(draw: st.DrawFn) -> dict[str, Any]:
    root = draw(unit_trees())
    root["budget"] = {**root.get("budget", {}), "cost": {"fixed": draw(st.integers(1, 10**7))}}
    if "percent" in root["budget"].get("tokens", {}):
        del root["budget"]["tokens"]  # the root must be fixed in every metric it caps
    root["models"] = MODELS
    return {
        "institution": {"id": "i" + uuid.uuid4().hex[:12], "name": "Prop U", "currency": "EUR",
                        "timezone": "Europe/Berlin", "semesters": []},
        "providers": [{"id": "p", "type": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
                       "models": [{"id": m, "upstream": m, "price": {"input_per_mtok": 0.5, "output_per_mtok": 1.25}}
                                  for m in MODELS]}],
        "units": [root],
        "users": [],
    }  # fmt: skip


async def _round_trip(url: str, doc: dict[str, Any]) -> tuple[bool, bool, dict[str, Any]]:
    engine = make_async_engine(url, pool_size=1)
    try:
        factory = session_factory(engine)
        async with factory() as s, s.begin():
            first = await apply_org(s, parse_document(doc))
        async with factory() as s:
            exported = await export_org(s, doc["institution"]["id"])
        async with factory() as s, s.begin():
            second = await apply_org(s, parse_document(exported))
        return first.changed, second.changed, exported
    finally:
        await engine.dispose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=org_files())
def test_import_export_import_is_a_fixed_point(pg_url: str, doc: dict[str, Any]) -> None:
    first_changed, second_changed, exported = asyncio.run(_round_trip(pg_url, doc))
    assert first_changed
    assert not second_changed
    assert exported["units"][0]["budget"]["cost"] == doc["units"][0]["budget"]["cost"]
