"""The fair queue of a self-hosted model's slots (quota/fairq.py, quota/lua/fairq.lua) on the real Redis.

Tests that check an order drive the script with a controlled clock (`FairQueue(clock=...)`), so what
they see depends on the algorithm alone; the waking tests run real waiters against real pub/sub.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from providers.config import QueueConfig
from quota.fairq import FairQueue, QueueRefused, Slot

Q = "campus-vllm|llama"
LONG = QueueConfig(max_wait_seconds=300, max_waiting=100_000)


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
async def redis(redis_url: str, inst: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


async def _queued(fq: FairQueue, inst: str, rid: str, flow: str, weight: float, slots: int) -> str:
    """Enqueue without waiting (op A), as a waiter does first; returns its queue member."""
    reply = await fq._run(inst, Q, "A", slots, rid, fq.gateway_id, flow, weight, 300_000, 100_000)
    assert reply[0] == "QUEUED", reply
    return reply[1]


async def _until_queued(redis: Redis, inst: str, n: int) -> None:
    """Until `n` requests wait (the waiters run as tasks)."""
    for _ in range(3000):
        if await redis.zcard(f"eq:{{{inst}}}:fq:{Q}:q") >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} waiters never queued")


async def _grant_order(fq: FairQueue, inst: str, holders: list[str], slots: int, n: int) -> list[str]:
    """Free one slot at a time (the oldest holder) and record whose waiter got it."""
    out = []
    for _ in range(n):
        await fq.release(Slot(inst, Q, holders.pop(0), 0, slots))
        busy = [m.decode() for m in await fq.redis.zrange(f"eq:{{{inst}}}:fq:{Q}:busy", 0, -1)]
        new = [b for b in busy if b not in holders]
        assert len(new) == 1, (busy, holders)
        holders.append(new[0])
        out.append(new[0].split("-")[0])
    return out


async def _filled(fq: FairQueue, inst: str, slots: int) -> list[str]:
    holders = []
    for i in range(slots):
        got = await fq.acquire(inst, Q, f"x-{i}", "*", 1, slots, LONG)
        assert isinstance(got, Slot) and got.waited_ms == 0
        holders.append(got.rid)
    return holders


async def test_grant_order_is_exactly_3_to_1(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, "gw1", lease=600, clock=Clock())
    holders = await _filled(fq, inst, 4)
    for i in range(300):  # both flows backlogged: 300 requests each, arriving interleaved
        await _queued(fq, inst, f"teach-{i}", "teaching", 3, 4)
        await _queued(fq, inst, f"res-{i}", "research", 1, 4)
    order = await _grant_order(fq, inst, holders, 4, 400)
    groups = [order[i : i + 4] for i in range(0, 400, 4)]
    assert [g.count("teach") for g in groups] == [3] * 100
    assert order.count("teach") == 300 and order.count("res") == 100


async def test_grants_follow_the_weights_not_the_arrival_order(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, "gw1", lease=600, clock=Clock())
    holders = await _filled(fq, inst, 2)
    for i in range(100):  # every research request arrives before any teaching one
        await _queued(fq, inst, f"res-{i}", "research", 1, 2)
    for i in range(100):
        await _queued(fq, inst, f"teach-{i}", "teaching", 3, 2)
    order = await _grant_order(fq, inst, holders, 2, 80)
    assert order.count("teach") == 60 and order.count("res") == 20


async def test_idle_flow_banks_nothing(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, "gw1", lease=600, clock=Clock())
    holders = await _filled(fq, inst, 4)
    for i in range(400):
        await _queued(fq, inst, f"res-{i}", "research", 1, 4)
    alone = await _grant_order(fq, inst, holders, 4, 100)
    assert alone == ["res"] * 100  # teaching idle: research gets every slot
    for i in range(300):
        await _queued(fq, inst, f"teach-{i}", "teaching", 3, 4)
    after = await _grant_order(fq, inst, holders, 4, 200)
    # A flow credited for its idle time would take the next ~100 grants in a row (its tags would start at
    # 0, far behind research's); it starts at the current virtual time instead, so 3 : 1 from then on.
    longest, run = 0, 0
    for who in after:
        run = run + 1 if who == "teach" else 0
        longest = max(longest, run)
    assert longest <= 4
    assert 149 <= after.count("teach") <= 151


async def test_a_flow_alone_gets_every_slot(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, "gw1", lease=600)
    held = [await fq.acquire(inst, Q, f"r-{i}", "research", 1, 4, LONG) for i in range(4)]
    assert all(isinstance(s, Slot) and s.waited_ms == 0 for s in held)
    listener = asyncio.create_task(fq.listen())
    await fq.listening.wait()
    try:
        waiter = asyncio.create_task(fq.acquire(inst, Q, "r-5", "research", 1, 4, LONG))
        await _until_queued(redis, inst, 1)
        first = held[0]
        assert isinstance(first, Slot)
        await fq.release(first)
        got = await waiter
        assert isinstance(got, Slot) and got.rid == "r-5"
    finally:
        listener.cancel()


async def test_a_full_queue_refuses_at_once(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, "gw1", lease=600, clock=Clock())
    await _filled(fq, inst, 1)
    await _queued(fq, inst, "w-1", "a", 1, 1)
    got = await fq.acquire(inst, Q, "w-2", "a", 1, 1, QueueConfig(max_wait_seconds=300, max_waiting=1))
    assert isinstance(got, QueueRefused) and got.reason == "full"


async def test_a_wait_past_max_wait_is_refused_and_leaves_the_queue(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, "gw1", lease=600, poll=0.05)
    await _filled(fq, inst, 1)
    got = await fq.acquire(inst, Q, "w-1", "a", 1, 1, QueueConfig(max_wait_seconds=0.2))
    assert isinstance(got, QueueRefused) and got.reason == "timeout"
    assert await redis.zcard(f"eq:{{{inst}}}:fq:{Q}:q") == 0


async def test_a_dead_holders_slot_returns_after_its_lease(redis: Redis, inst: str) -> None:
    clock = Clock()
    dead = FairQueue(redis, "gw-dead", lease=30, clock=clock)
    live = FairQueue(redis, "gw-live", lease=30, clock=clock)
    assert isinstance(await dead.acquire(inst, Q, "held-by-dead", "a", 1, 1, LONG), Slot)
    member = await _queued(live, inst, "w-1", "b", 1, 1)
    assert member.startswith("gw-live|w-1|")
    clock.ms += 29_999  # within the lease: still busy (a live gateway would have renewed it)
    assert (await live._run(inst, Q, "P", 1, "w-1"))[0] == "WAITING"
    clock.ms += 1  # the lease ran out and nobody renewed it
    assert (await live._run(inst, Q, "P", 1, "w-1"))[0] == "GRANTED"


async def test_renewed_leases_keep_their_slot(redis: Redis, inst: str) -> None:
    clock = Clock()
    fq = FairQueue(redis, "gw1", lease=30, clock=clock)
    slot = await fq.acquire(inst, Q, "holder", "a", 1, 1, LONG)
    assert isinstance(slot, Slot)
    await _queued(fq, inst, "w-1", "b", 1, 1)
    for _ in range(5):
        clock.ms += 20_000
        await fq.renew([slot])
        assert (await fq._run(inst, Q, "P", 1, "w-1"))[0] == "WAITING"


async def test_a_waiter_that_gave_up_is_skipped(redis: Redis, inst: str) -> None:
    clock = Clock()
    fq = FairQueue(redis, "gw1", lease=600, clock=clock)
    holders = await _filled(fq, inst, 1)
    # w-early's gateway died while it waited: its give-up time passes with nobody removing it
    reply = await fq._run(inst, Q, "A", 1, "w-early", "gw-dead", "a", 1, 1_000, 100)
    assert reply[0] == "QUEUED"
    await _queued(fq, inst, "w-late", "a", 1, 1)
    clock.ms += 5_000
    order = await _grant_order(fq, inst, holders, 1, 1)
    assert order == ["w"] and holders == ["w-late"]
    # a waiter that gave up through the client (op C) is gone at once
    quit_member = await _queued(fq, inst, "w-quit", "a", 1, 1)
    member = await _queued(fq, inst, "w-next", "b", 1, 1)
    assert (await fq._run(inst, Q, "C", 1, "w-quit", quit_member, 1))[0] == "GONE"
    await fq.release(Slot(inst, Q, "w-late", 0, 1))
    busy = [m.decode() for m in await redis.zrange(f"eq:{{{inst}}}:fq:{Q}:busy", 0, -1)]
    assert busy == ["w-next"] and member.startswith("gw1|w-next|")


async def test_a_cancelled_waiter_frees_a_slot_granted_meanwhile(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, "gw1", lease=600)
    holders = await _filled(fq, inst, 1)
    waiter = asyncio.create_task(fq.acquire(inst, Q, "w-1", "a", 1, 1, LONG))
    await _until_queued(redis, inst, 1)
    await fq.release(Slot(inst, Q, holders[0], 0, 1))  # granted to w-1 (no listener: it has not seen it)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await redis.zcard(f"eq:{{{inst}}}:fq:{Q}:busy") == 0
    got = await fq.acquire(inst, Q, "w-2", "a", 1, 1, LONG)
    assert isinstance(got, Slot) and got.waited_ms == 0


async def test_waiters_of_many_requests_share_one_subscription(redis: Redis, inst: str) -> None:
    fq = FairQueue(redis, f"gw-{uuid.uuid4().hex[:6]}", lease=600, poll=300)  # no polling: pub/sub only
    listener = asyncio.create_task(fq.listen())
    await fq.listening.wait()
    try:
        holders = await _filled(fq, inst, 2)
        waiters = [asyncio.create_task(fq.acquire(inst, Q, f"w-{i}", "a", 1, 2, LONG)) for i in range(20)]
        await _until_queued(redis, inst, 20)
        subs = await redis.pubsub_numsub(fq.channel)
        assert subs[0][1] == 1
        for rid in holders:
            await fq.release(Slot(inst, Q, rid, 0, 2))
        done = 0
        for w in asyncio.as_completed(waiters):
            slot = await w
            assert isinstance(slot, Slot)
            done += 1
            await fq.release(slot)
        assert done == 20
    finally:
        listener.cancel()


async def test_a_waiter_whose_client_hangs_up_leaves_at_once_and_frees_a_slot_granted_meanwhile(
    redis: Redis, inst: str
) -> None:
    """The client hangs up while its request waits (`until_gone` returns): the request leaves the queue,
    and a slot granted to it meanwhile goes straight to the next waiter, not to a request nobody reads."""
    fq = FairQueue(redis, "gw1", lease=600, poll=300)  # no listener, no polling: only the hang-up wakes it
    holders = await _filled(fq, inst, 1)
    hung_up = [asyncio.Event() for _ in range(2)]
    first = asyncio.create_task(fq.acquire(inst, Q, "w-1", "a", 1, 1, LONG, hung_up[0].wait))
    await _until_queued(redis, inst, 1)
    second = asyncio.create_task(fq.acquire(inst, Q, "w-2", "a", 1, 1, LONG, hung_up[1].wait))
    await _until_queued(redis, inst, 2)
    hung_up[1].set()  # w-2 hangs up while it waits
    got = await second
    assert isinstance(got, QueueRefused) and got.reason == "gone"
    assert await redis.zcard(f"eq:{{{inst}}}:fq:{Q}:q") == 1
    await fq.release(Slot(inst, Q, holders[0], 0, 1))  # granted to w-1, which has not seen it yet
    hung_up[0].set()
    got = await first
    assert isinstance(got, QueueRefused) and got.reason == "gone"
    assert await redis.zcard(f"eq:{{{inst}}}:fq:{Q}:busy") == 0  # its slot was freed
    assert await redis.zcard(f"eq:{{{inst}}}:fq:{Q}:q") == 0


async def test_one_unit_cannot_fill_the_whole_waiting_room(redis: Redis, inst: str) -> None:
    """A flow holds at most max_waiting - floor(max_waiting / 10) places; the rest stay for other units."""
    fq = FairQueue(redis, "gw1", lease=600, clock=Clock())
    await _filled(fq, inst, 1)
    replies = [
        (await fq._run(inst, Q, "A", 1, f"res-{i}", "gw1", "research", 1, 300_000, 10))[0] for i in range(10)
    ]
    assert replies == ["QUEUED"] * 9 + ["FULL"]
    teach = await fq._run(inst, Q, "A", 1, "teach-0", "gw1", "teaching", 3, 300_000, 10)
    assert teach[0] == "QUEUED", teach  # before: FULL, research held every place
    assert (await fq._run(inst, Q, "A", 1, "teach-1", "gw1", "teaching", 3, 300_000, 10))[0] == "FULL"


async def test_waiters_that_give_up_do_not_push_their_unit_back(redis: Redis, inst: str) -> None:
    """300 teaching requests queue and give up (a script's hang-ups): teaching's tag must not stay 300
    strides ahead, or the lecture behind them would get nothing until research caught up."""
    fq = FairQueue(redis, "gw1", lease=600, clock=Clock())
    holders = await _filled(fq, inst, 1)
    junk = [await _queued(fq, inst, f"junk-{i}", "teaching", 3, 1) for i in range(300)]
    for i, member in enumerate(junk):
        assert (await fq._run(inst, Q, "C", 1, f"junk-{i}", member, 0))[0] == "GONE"
    for i in range(100):
        await _queued(fq, inst, f"teach-{i}", "teaching", 3, 1)
        await _queued(fq, inst, f"res-{i}", "research", 1, 1)
    order = await _grant_order(fq, inst, holders, 1, 100)
    assert order.count("teach") == 75, order  # before: 0 (research got all 100)
