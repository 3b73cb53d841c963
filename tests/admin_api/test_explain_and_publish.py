"""Explain reads quota's live numbers; every org change reaches Redis (compiled caps, both invalidations),
also when several admins save at the same moment."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from core.channels import CATALOG_CHANNEL
from quota import QuotaEngine, Reservation
from quota.caps import resolve_caps
from quota.keys import INVALIDATION_CHANNEL
from quota.sources import load_spec
from tests.admin_api.conftest import Env

USD = 1_000_000


async def test_explain_lists_every_node_of_the_path(env: Env, redis_url: str) -> None:
    replica = QuotaEngine.from_url(redis_url)
    try:
        r = await replica.reserve(env.inst, "ada-research", "r1", input_tokens=0, max_output_tokens=4,
                                  price_in=0, price_out=USD * 1_000_000)  # fmt: skip
        assert isinstance(r, Reservation)
        student = await env.login("r1")
        response = await student.get("/api/v1/explain", params={"unit": "ada-research"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [n["node"] for n in body["nodes"]] == [
            "member(r1,ada-research)",
            "ada-research",
            "ada",
            "cs",
            "eng",
            "stateu",
        ]
        caps = [n["metrics"]["cost"]["cap"] for n in body["nodes"]]
        assert caps == [None, 500 * USD, None, 1000 * USD, 4000 * USD, 10000 * USD]
        research = body["nodes"][1]
        assert research["metrics"]["cost"]["reserved"] == 4 * USD and research["metrics"]["cost"]["used"] == 0
        assert research["metrics"]["cost"]["room"] == 496 * USD
        assert research["metrics"]["cost"]["extras"][0]["id"] == "nsf-123"
        assert research["metrics"]["cost"]["extras"][0]["amount"] == 250 * USD
        assert research["resets_at"] is not None and research["period"] == "month"
        assert body["available"]["cost"] == 496 * USD + 250 * USD
        await replica.release(r)
    finally:
        await replica.close()


async def listen(
    redis_url: str, channels: list[str], ready: asyncio.Event, out: list[tuple[str, str]]
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    pubsub = redis.pubsub()
    await pubsub.subscribe(*channels)
    ready.set()
    try:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                out.append((msg["channel"], msg["data"]))
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def test_a_roster_change_is_compiled_and_announced(env: Env, redis_url: str) -> None:
    heard: list[tuple[str, str]] = []
    ready = asyncio.Event()
    task = asyncio.create_task(listen(redis_url, [CATALOG_CHANNEL, INVALIDATION_CHANNEL], ready, heard))
    try:
        await ready.wait()
        admin = await env.login("csadmin")
        # a fair-share member cap depends on the member count: the compiled member cap must follow the roster
        fair = {
            "cost": {"mode": "fixed", "amount": 200 * USD},
            "member_cap": {"cost": {"mode": "fair_share", "factor": 2}},
        }
        assert (await admin.put("/api/v1/units/cs101/budget", json=fair)).status_code == 200
        before = await member_cap(env, "cs101")
        assert before == 2 * 200 * USD // 4  # s1, s3, prof-ada, ta1
        added = await admin.put("/api/v1/units/cs101/members/s2", json={"role": "student"})
        assert added.status_code == 200
        assert await member_cap(env, "cs101") == 2 * 200 * USD // 5
        for _ in range(100):
            if sum(1 for c, _ in heard if c == CATALOG_CHANNEL) >= 2:
                break
            await asyncio.sleep(0.05)
        assert [d for c, d in heard if c == CATALOG_CHANNEL] == [env.inst, env.inst]
        assert len([d for c, d in heard if c == INVALIDATION_CHANNEL and d.startswith(f"{env.inst} ")]) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def member_cap(env: Env, unit: str) -> Any:
    explained = await env.state.quota.explain(env.inst, unit, "s1")
    return explained.nodes[0].metrics["cost"].cap


async def test_concurrent_edits_leave_redis_matching_the_database(env: Env) -> None:
    """Admins saving at once: whatever the interleaving, the caps installed last are the committed ones."""
    admins = [await env.login(u) for u in ("uadmin", "eadmin", "csadmin", "prof-ada")]
    edits = []
    for i in range(24):
        client = admins[i % len(admins)]
        unit = ["cs101", "cs102", "ada-research"][i % 3]
        body = {"cost": {"mode": "fixed", "amount": (100 + i) * USD}}
        edits.append(client.put(f"/api/v1/units/{unit}/budget", json=body))
    edits.append(
        admins[0].put("/api/v1/units/cs/budget", json={"cost": {"mode": "fixed", "amount": 900 * USD}})
    )
    responses = await asyncio.gather(*edits)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]

    async with env.db() as session:
        spec = await load_spec(session, env.inst)
    expected = resolve_caps(spec)
    env.state.quota.invalidate(env.inst)
    for unit in ("cs101", "cs102", "ada-research", "cs", "ada-teaching"):
        explained = await env.state.quota.explain(env.inst, unit, "nobody")
        node = next(n for n in explained.nodes if n.node == unit)
        assert node.metrics["cost"].cap == expected[unit]["cost"], unit
