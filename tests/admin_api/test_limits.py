"""Limits through the API: saved, audited, in the next quota spec, and live use read from Redis."""

from __future__ import annotations

from quota.keys import limit_leases, limit_window
from quota.model import LimitSpec
from quota.sources import load_spec
from tests.admin_api.conftest import Env
from tests.admin_api.helpers import audit_entries

CS101 = {
    "limits": {"requests_per_minute": 1000},
    "member_limits": {"requests_per_minute": 20, "concurrent": 2},
}


async def _spec_limits(env: Env) -> dict[str, LimitSpec]:
    async with env.db() as session:
        return dict((await load_spec(session, env.inst)).limits)


async def test_put_limits_is_saved_audited_and_in_the_spec(env: Env) -> None:
    admin = await env.login("csadmin")
    assert (await admin.get("/api/v1/units/cs101/limits")).json() == {
        "unit_id": "cs101", "limits": None, "member_limits": None
    }  # fmt: skip
    saved = await admin.put("/api/v1/units/cs101/limits", json=CS101)
    assert saved.status_code == 200, saved.text
    assert saved.json() == {
        "unit_id": "cs101",
        "limits": {"requests_per_minute": 1000, "tokens_per_minute": None, "concurrent": None},
        "member_limits": {"requests_per_minute": 20, "tokens_per_minute": None, "concurrent": 2},
    }
    assert (await admin.get("/api/v1/units/cs101/limits")).json() == saved.json()
    assert await _spec_limits(env) == {
        "u:cs101": LimitSpec(rpm=1000),
        "m:cs101": LimitSpec(rpm=20, concurrent=2),
    }
    [entry] = await audit_entries(env, "limits.")
    assert entry.actor == "csadmin" and entry.target == "unit:" + env.inst + "/cs101"
    assert entry.before is not None and entry.before["limits"] is None
    assert entry.after is not None and entry.after["limits"] == {
        "limits": {"requests_per_minute": 1000}, "member_limits": {"requests_per_minute": 20, "concurrent": 2}
    }  # fmt: skip
    # the same again changes nothing and writes no audit entry; an empty body removes them
    assert (await admin.put("/api/v1/units/cs101/limits", json=CS101)).status_code == 200
    assert len(await audit_entries(env, "limits.")) == 1
    assert (await admin.put("/api/v1/units/cs101/limits", json={})).status_code == 200
    assert await _spec_limits(env) == {}
    assert len(await audit_entries(env, "limits.")) == 2


async def test_bad_limits_are_422_with_the_field(env: Env) -> None:
    admin = await env.login("uadmin")
    empty = await admin.put("/api/v1/units/cs101/limits", json={"limits": {}})
    assert empty.status_code == 422
    assert "give at least one of requests_per_minute, tokens_per_minute, concurrent" in empty.text
    zero = await admin.put("/api/v1/units/cs101/limits", json={"member_limits": {"concurrent": 0}})
    assert zero.status_code == 422 and "concurrent" in zero.text
    assert await audit_entries(env, "limits.") == []


async def test_fair_share_is_checked_against_the_tree(env: Env) -> None:
    admin = await env.login("uadmin")
    bad = await admin.put("/api/v1/fair-share", json={"weights": {"teachng": 3}})
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["details"]["problems"] == [
        {"path": "weights.teachng", "message": "no unit or unit kind 'teachng' in this file"}
    ]
    body = {"weights": {"course": 3, "research": 1},
            "windows": [{"name": "exam weeks", "from": "2026-12-07", "to": "2026-12-18", "weights": {"course": 9}}]}  # fmt: skip
    ok = await admin.put("/api/v1/fair-share", json=body)
    assert ok.status_code == 200, ok.text
    got = (await admin.get("/api/v1/fair-share")).json()
    assert got["weights"] == {"course": 3, "research": 1}
    assert got["windows"][0]["from"] == "2026-12-07"
    [entry] = await audit_entries(env, "fair_share.")
    assert entry.after is not None and entry.after["fair_share"]["windows"][0]["name"] == "exam weeks"


async def test_live_use_counts_the_window_and_the_leases(env: Env) -> None:
    admin = await env.login("uadmin")
    assert (await admin.put("/api/v1/units/cs101/limits", json=CS101)).status_code == 200
    redis = env.state.redis
    secs, _ = await redis.time()
    now = int(secs)
    # buckets as the reservation writes them: one field per second "<requests> <tokens>", plus totals `t`
    await redis.hset(limit_window(env.inst, "u:cs101"), mapping={
        "t": "irrelevant", str(now - 70): "50 5000", str(now - 30): "3 300", str(now): "2 200"
    })  # fmt: skip
    await redis.hset(limit_window(env.inst, "m:cs101:s1"), mapping={str(now - 1): "4 400"})
    await redis.zadd(limit_leases(env.inst, "m:cs101:s1"), {"r1": (now + 30) * 1000, "r2": (now - 5) * 1000})
    live = await admin.get("/api/v1/limits/live", params={"unit": "cs101", "user": "s1"})
    assert live.status_code == 200, live.text
    nodes = {n["node"]: n for n in live.json()["nodes"]}
    assert nodes["u:cs101"]["used"] == {"requests": 5, "tokens": 500, "concurrent": 0}
    assert nodes["m:cs101"]["used"] == {"requests": 4, "tokens": 400, "concurrent": 1}
    assert (
        nodes["m:cs101"]["subject"] == "cs101:s1" and nodes["m:cs101"]["limits"]["requests_per_minute"] == 20
    )


async def test_live_use_of_a_member_is_for_usage_readers(env: Env) -> None:
    student = await env.login("s1")
    assert (await student.get("/api/v1/limits/live", params={"unit": "cs101"})).status_code == 200
    refused = await student.get("/api/v1/limits/live", params={"unit": "cs101", "user": "s2"})
    assert refused.status_code == 403


async def test_provider_and_model_limits_contracts_and_slots_through_the_catalog(env: Env) -> None:
    admin = await env.login("uadmin")
    model = {"upstream": "meta-llama/Llama-3.1-8B-Instruct", "price": {"input_per_mtok": 50_000, "output_per_mtok": 80_000},
             "slots": 4, "queue": {"max_wait_seconds": 60}, "limits": {"tokens_per_minute": 90_000}}  # fmt: skip
    put = await admin.put("/api/v1/providers/campus-vllm/models/llama-3.1-8b", json=model)
    assert put.status_code == 200, put.text
    assert put.json()["slots"] == 4 and put.json()["queue"]["max_wait_seconds"] == 60
    assert put.json()["limits"]["tokens_per_minute"] == 90_000
    prov = {"type": "openai", "api_key_env": "OPENAI_API_KEY", "limits": {"requests_per_minute": 5000},
            "contract": {"cost": 4000, "period": "month"}}  # fmt: skip
    assert (await admin.put("/api/v1/providers/openai", json=prov)).status_code == 200, "provider"
    async with env.db() as session:
        spec = await load_spec(session, env.inst)
    assert spec.limits["pm:campus-vllm|llama-3.1-8b"] == LimitSpec(tpm=90_000)
    assert spec.limits["p:openai"] == LimitSpec(rpm=5000)
    assert spec.contracts["c:openai"].cost == 4_000_000_000
    live = (await admin.get("/api/v1/limits/live")).json()["nodes"]
    assert {n["node"] for n in live} == {"p:openai", "pm:campus-vllm|llama-3.1-8b"}
    # slots only on self-hosted models
    cloud = {"price": {"input_per_mtok": 1, "output_per_mtok": 1}, "slots": 2}
    refused = await admin.put("/api/v1/providers/openai/models/gpt-4o-mini", json=cloud)
    assert refused.status_code == 422 and "only self-hosted providers" in refused.text


async def test_a_model_read_back_and_saved_again_keeps_every_setting(env: Env) -> None:
    """The dashboard edits one part of a model (its price, its limits) and sends the rest back as the catalog
    answered it: priority, fallbacks and the image rule were missing from the answer, so any save from the
    dashboard dropped them."""
    admin = await env.login("uadmin")
    model = {"upstream": "meta-llama/Llama-3.1-8B-Instruct", "vision": True, "price": {"input_per_mtok": 50_000,
             "output_per_mtok": 80_000}, "priority": 7, "fallbacks": ["gpt-4o-mini"], "image_tokens": "qwen2-vl"}  # fmt: skip
    put = await admin.put("/api/v1/providers/campus-vllm/models/llama-3.1-8b", json=model)
    assert put.status_code == 200, put.text
    (read,) = [m for m in (await admin.get("/api/v1/models")).json() if m["id"] == "llama-3.1-8b"]
    assert (read["priority"], read["fallbacks"], read["image_tokens"]) == (7, ["gpt-4o-mini"], "qwen2-vl")
    again = {
        k: read[k]
        for k in ("upstream", "vision", "max_output_tokens", "priority", "fallbacks", "image_tokens")
    }
    again["price"] = {"input_per_mtok": 60_000, "output_per_mtok": 80_000}
    saved = await admin.put("/api/v1/providers/campus-vllm/models/llama-3.1-8b", json=again)
    assert saved.status_code == 200, saved.text
    assert (saved.json()["priority"], saved.json()["fallbacks"], saved.json()["image_tokens"]) == (
        7, ["gpt-4o-mini"], "qwen2-vl"
    )  # fmt: skip
    wrong = await admin.put(
        "/api/v1/providers/campus-vllm/models/llama-3.1-8b", json={**again, "image_tokens": "nope"}
    )
    assert wrong.status_code == 422, wrong.text


async def test_live_use_of_a_member_shows_only_what_the_caller_may_read(env: Env) -> None:
    """A member's window under a unit counts their use anywhere below it. An instructor of cs102 may read
    s2's use in cs102, not s2's use across the institution, and nobody's who is not in cs102 at all."""
    admin = await env.login("uadmin")
    for unit in ("stateu", "cs102"):
        put = await admin.put(
            f"/api/v1/units/{unit}/limits", json={"member_limits": {"requests_per_minute": 600}}
        )
        assert put.status_code == 200, put.text
    secs, _ = await env.state.redis.time()
    for who in ("r1", "s2"):  # each made 37 requests in the last minute somewhere in the institution
        await env.state.redis.hset(
            limit_window(env.inst, f"m:stateu:{who}"), mapping={str(int(secs) - 1): "37 9000"}
        )
    inst1 = await env.login("inst1")  # instructor of cs102, no admin role
    stranger = await inst1.get("/api/v1/limits/live", params={"unit": "cs102", "user": "r1"})
    assert stranger.status_code == 403, stranger.text  # before: 200 with r1's institution-wide 37
    assert set(stranger.json()["error"]) == {"code", "message", "details"}
    student = await inst1.get("/api/v1/limits/live", params={"unit": "cs102", "user": "s2"})
    assert student.status_code == 200, student.text
    assert {n["node"] for n in student.json()["nodes"] if n["what"] == "member"} == {"m:cs102"}
    whole = await admin.get("/api/v1/limits/live", params={"unit": "cs102", "user": "s2"})
    used = {n["node"]: n["used"]["requests"] for n in whole.json()["nodes"] if n["what"] == "member"}
    assert used == {"m:cs102": 0, "m:stateu": 37}  # an institution admin reads the whole path


async def test_live_use_without_redis_is_a_503_that_names_no_host(env: Env) -> None:
    from redis.asyncio import Redis

    from tests.conftest import free_port

    admin = await env.login("uadmin")
    live_redis, port = env.state.redis, free_port()
    env.state.redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")  # nothing listens there
    try:
        r = await admin.get("/api/v1/limits/live", params={"unit": "cs101"})
    finally:
        await env.state.redis.aclose()
        env.state.redis = live_redis
    assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable", r.text
    assert str(port) not in r.text and r.json()["error"]["details"] == {}  # before: the connection error
