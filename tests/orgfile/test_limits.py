"""Limits, contracts, slots and fair share in the institution file: every refusal names its place, and
what is imported comes back out of `org export` unchanged."""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from admin_api.orgfile import OrgFileError, apply_org, export_org, parse_document
from core.db import make_async_engine, session_factory
from quota.model import ContractSpec, InstitutionSpec, LimitSpec
from quota.sources import ledger_scope, load_spec


def _doc() -> dict[str, Any]:
    return {
        "institution": {"id": "lim-" + uuid.uuid4().hex[:10], "name": "Limit U", "currency": "USD",
                        "timezone": "America/Chicago", "semesters": []},
        "fair_share": {
            "weights": {"teaching": 3, "research": 1},
            "default_weight": 1,
            "windows": [{"name": "exam weeks", "from": "2026-12-07", "to": "2026-12-18",
                         "weights": {"teaching": 9}}],
        },
        "providers": [
            {"id": "openai", "type": "openai", "api_key_env": "OPENAI_API_KEY",
             "limits": {"requests_per_minute": 5000, "tokens_per_minute": 2000000, "concurrent": 500},
             "contract": {"cost": 50000, "period": "year"},
             "models": [{"id": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10},
                         "limits": {"tokens_per_minute": 800000},
                         "contract": {"cost": 4000.5, "period": "month"}}]},
            {"id": "campus-vllm", "type": "vllm", "base_url": "http://127.0.0.1:9/v1",
             "models": [{"id": "llama-3.1-8b", "price": {"input_per_mtok": 0.05, "output_per_mtok": 0.1},
                         "slots": 16,
                         "queue": {"max_wait_seconds": 60, "max_waiting": 1000, "retry_after_seconds": 5}}]},
        ],
        "units": [{
            "id": "stateu", "kind": "university", "budget": {"cost": {"fixed": 1000}},
            "limits": {"requests_per_minute": 20000},
            "member_limits": {"requests_per_minute": 60, "concurrent": 4},
            "children": [
                {"id": "teach", "kind": "teaching", "children": [
                    {"id": "cs101", "kind": "course",
                     "member_limits": {"requests_per_minute": 20, "tokens_per_minute": 40000}}]},
                {"id": "lab", "kind": "research", "limits": {"concurrent": 8}},
            ],
        }],
        "users": [],
    }  # fmt: skip


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(OrgFileError) as info:
        parse_document(doc)
    return [f"{path}: {msg}" for path, msg in info.value.problems]


def test_the_example_file_is_accepted() -> None:
    org = parse_document(_doc())
    assert org.units[0].member_limits is not None and org.units[0].member_limits.concurrent == 4
    model = org.providers[1].models[0]
    assert model.slots == 16 and model.queue_config is not None and model.queue_config.max_wait_seconds == 60
    assert org.fair_share is not None and org.fair_share.windows[0].from_.isoformat() == "2026-12-07"


def test_a_model_with_slots_and_no_queue_gets_the_default_queue() -> None:
    doc = _doc()
    del doc["providers"][1]["models"][0]["queue"]
    model = parse_document(doc).providers[1].models[0]
    assert model.queue is None
    assert model.queue_config is not None
    assert (model.queue_config.max_wait_seconds, model.queue_config.max_waiting) == (30, 1000)
    assert model.queue_config.retry_after_seconds == 5


def test_empty_limits_name_the_fields_to_give() -> None:
    doc = _doc()
    doc["units"][0]["children"][1]["limits"] = {}
    assert _problems(doc) == [
        "units[0].children[1].limits: give at least one of requests_per_minute, tokens_per_minute, concurrent"
    ]


def test_empty_member_and_provider_limits_are_refused_by_path() -> None:
    doc = _doc()
    doc["units"][0]["member_limits"] = {}
    doc["providers"][0]["models"][0]["limits"] = {}
    assert _problems(doc) == [
        "providers[0].models[0].limits: give at least one of requests_per_minute, tokens_per_minute, concurrent",
        "units[0].member_limits: give at least one of requests_per_minute, tokens_per_minute, concurrent",
    ]


def test_limit_values_must_be_positive_and_known() -> None:
    doc = _doc()
    doc["units"][0]["limits"] = {"requests_per_minute": 0, "per_hour": 5}
    assert _problems(doc) == [
        "units[0].limits.requests_per_minute: Input should be greater than or equal to 1",
        "units[0].limits.per_hour: unknown field",
    ]


def test_contract_period_is_month_or_year() -> None:
    doc = _doc()
    doc["providers"][0]["contract"]["period"] = "week"
    assert _problems(doc) == ["providers[0].contract.period: Input should be 'month' or 'year'"]


def test_contract_cost_is_bounded() -> None:
    doc = _doc()
    doc["providers"][0]["contract"]["cost"] = 9_000_000_001
    assert _problems(doc) == ["providers[0].contract.cost: too large (at most 9,000,000,000)"]
    doc["providers"][0]["contract"]["cost"] = 9_000_000_000
    parse_document(doc)


def test_contract_cost_is_positive() -> None:
    doc = _doc()
    doc["providers"][0]["models"][0]["contract"]["cost"] = 0
    assert _problems(doc) == ["providers[0].models[0].contract.cost: Input should be greater than 0"]


def test_slots_only_on_self_hosted_providers() -> None:
    doc = _doc()
    doc["providers"][0]["models"][0]["slots"] = 4
    assert _problems(doc) == [
        "providers[0].models[0].slots: only self-hosted providers (vllm, openai-compatible) have slots"
    ]


def test_a_queue_needs_slots() -> None:
    doc = _doc()
    del doc["providers"][1]["models"][0]["slots"]
    assert _problems(doc) == ["providers[1].models[0].queue: needs slots"]


def test_queue_bounds() -> None:
    doc = _doc()
    doc["providers"][1]["models"][0]["queue"] = {"max_wait_seconds": 301, "max_waiting": 0,
                                                 "retry_after_seconds": 121}  # fmt: skip
    assert _problems(doc) == [
        "providers[1].models[0].queue.max_wait_seconds: Input should be less than or equal to 300",
        "providers[1].models[0].queue.max_waiting: Input should be greater than or equal to 1",
        "providers[1].models[0].queue.retry_after_seconds: Input should be less than or equal to 120",
    ]


def test_a_weight_must_name_a_unit_or_kind() -> None:
    doc = _doc()
    doc["fair_share"]["weights"] = {"teachng": 3, "lab": 2, "course": 1}
    doc["fair_share"]["windows"][0]["weights"] = {"resarch": 9}
    assert _problems(doc) == [
        "fair_share.weights.teachng: no unit or unit kind 'teachng' in this file",
        "fair_share.windows[0].weights.resarch: no unit or unit kind 'resarch' in this file",
    ]


def test_weights_are_positive() -> None:
    doc = _doc()
    doc["fair_share"]["weights"]["research"] = 0
    assert _problems(doc) == ["fair_share.weights.research: Input should be greater than 0"]


def test_a_window_must_not_end_before_it_starts() -> None:
    doc = _doc()
    doc["fair_share"]["windows"][0].update({"from": "2026-12-18", "to": "2026-12-07"})
    assert _problems(doc) == ["fair_share.windows[0]: from 2026-12-18 is after to 2026-12-07"]


def test_windows_must_not_overlap() -> None:
    doc = _doc()
    doc["fair_share"]["windows"].append(
        {"name": "finals", "from": "2026-12-18", "to": "2026-12-20", "weights": {"research": 2}}
    )
    assert _problems(doc) == ["fair_share.windows[1]: overlaps windows[0] (exam weeks)"]
    doc["fair_share"]["windows"][1]["from"] = "2026-12-19"
    parse_document(doc)


async def _round_trip(url: str, doc: dict[str, Any]) -> tuple[bool, bool, dict[str, Any]]:
    engine = make_async_engine(url, pool_size=1)
    try:
        factory = session_factory(engine)
        async with factory() as s, s.begin():
            first = await apply_org(s, parse_document(doc))
        async with factory() as s:
            exported = await export_org(s, doc["institution"]["id"])
        async with factory() as s, s.begin():
            second = await apply_org(s, parse_document(copy.deepcopy(exported)))
        return first.changed, second.changed, exported
    finally:
        await engine.dispose()


def test_import_export_round_trip_keeps_limits_contracts_slots_and_fair_share(pg_url: str) -> None:
    doc = _doc()
    first, second, exported = asyncio.run(_round_trip(pg_url, doc))
    assert first and not second
    assert exported["fair_share"] == {
        "weights": {"teaching": 3, "research": 1},
        "windows": [
            {"name": "exam weeks", "from": "2026-12-07", "to": "2026-12-18", "weights": {"teaching": 9}}
        ],
    }
    root = exported["units"][0]
    assert root["limits"] == {"requests_per_minute": 20000}
    assert root["member_limits"] == {"requests_per_minute": 60, "concurrent": 4}
    assert root["children"][0]["children"][0]["member_limits"] == {
        "requests_per_minute": 20,
        "tokens_per_minute": 40000,
    }
    assert root["children"][1]["limits"] == {"concurrent": 8}
    openai, vllm = exported["providers"]
    assert openai["limits"] == {"requests_per_minute": 5000, "tokens_per_minute": 2000000, "concurrent": 500}
    assert openai["contract"] == {"cost": 50000, "period": "year"}
    assert openai["models"][0]["contract"] == {"cost": 4000.5, "period": "month"}
    assert openai["models"][0]["limits"] == {"tokens_per_minute": 800000}
    assert vllm["models"][0]["slots"] == 16
    assert vllm["models"][0]["queue"] == {"max_wait_seconds": 60}  # the defaults are left out


def test_removing_limits_from_the_file_removes_them(pg_url: str) -> None:
    doc = _doc()
    asyncio.run(_round_trip(pg_url, doc))
    bare = copy.deepcopy(doc)
    del bare["fair_share"], bare["units"][0]["limits"], bare["units"][0]["member_limits"]
    del bare["providers"][0]["contract"]
    _, second, exported = asyncio.run(_round_trip(pg_url, bare))
    assert not second
    assert "fair_share" not in exported
    assert "limits" not in exported["units"][0] and "member_limits" not in exported["units"][0]
    assert "contract" not in exported["providers"][0]


async def _spec(url: str, doc: dict[str, Any]) -> InstitutionSpec:
    engine = make_async_engine(url, pool_size=1)
    try:
        factory = session_factory(engine)
        async with factory() as s, s.begin():
            await apply_org(s, parse_document(doc))
        async with factory() as s:
            return await load_spec(s, doc["institution"]["id"])
    finally:
        await engine.dispose()


def test_the_quota_spec_carries_every_limit_and_contract(pg_url: str) -> None:
    spec = asyncio.run(_spec(pg_url, _doc()))
    assert spec.limits == {
        "u:stateu": LimitSpec(rpm=20000),
        "m:stateu": LimitSpec(rpm=60, concurrent=4),
        "m:cs101": LimitSpec(rpm=20, tpm=40000),
        "u:lab": LimitSpec(concurrent=8),
        "p:openai": LimitSpec(rpm=5000, tpm=2000000, concurrent=500),
        "pm:openai|gpt-4o": LimitSpec(tpm=800000),
    }
    assert spec.contracts == {
        "c:openai": ContractSpec(cost=50_000_000_000, period="year"),
        "c:openai|gpt-4o": ContractSpec(cost=4_000_500_000, period="month"),
    }


def test_a_rebuild_reads_the_ledger_back_to_the_start_of_a_yearly_contract(pg_url: str) -> None:
    spec = asyncio.run(_spec(pg_url, _doc()))  # budgets are per month (the default); the contract per year
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    scope = ledger_scope(spec, now)
    assert scope.since is not None and scope.since.astimezone(ZoneInfo("America/Chicago")).date() == date(
        2026, 1, 1
    )
    assert {"y:2026", "m:2026-12"} <= scope.open_periods
    bare = ledger_scope(replace(spec, contracts={}), now)
    assert bare.since is not None and bare.since > scope.since
