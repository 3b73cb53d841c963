"""Limits and contract ceilings in the atomic reserve (lua/ops.lua) on a real Redis.

Windows are 60 one-second buckets, counted on the limit clock: Redis's own (the exactness test) or a
simulated one (``QuotaEngine(limit_clock=...)``) where a test moves time. Nothing is timed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from quota import (
    ContractSpec,
    InstitutionSpec,
    LimitRefusal,
    LimitSpec,
    QuotaEngine,
    RateInfo,
    Refusal,
    Reservation,
    Rule,
    UnitSpec,
    keys,
)
from quota.engine import _NO_LIMITS, _R
from quota.limits import Admit, Con, Entry, Limited, LimitModel
from quota.rebuild import recompute_counters
from quota.resp import bulk
from tests.quota.conftest import FAR_TTL, new_inst, wipe

# 2033-05-18, a second boundary. In the future: holds here expire on this simulated clock only, never by a
# sweeper of another process sharing the Redis (it sweeps every institution on Redis's clock).
NOW = 2_000_000_000.0
MONTH = "m:2033-05"


def spec(
    inst: str, limits: dict[str, LimitSpec] | None = None, contracts: dict[str, ContractSpec] | None = None
) -> InstitutionSpec:
    big = {"cost": Rule.fixed(10**12), "tokens": Rule.fixed(10**12)}
    return InstitutionSpec(
        id=inst,
        units=(UnitSpec(id="uni", parent=None, rules=big), UnitSpec(id="course", parent="uni")),
        limits=limits or {},
        contracts=contracts or {},
    )


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(redis_url: str, clock: Clock) -> AsyncIterator[QuotaEngine]:
    e = QuotaEngine.from_url(redis_url, reservation_ttl=FAR_TTL, clock=clock, limit_clock=clock)
    yield e
    await e.close()


async def reserve(e: QuotaEngine, inst: str, user: str = "alice", **kw: Any) -> Any:
    args: dict[str, Any] = {
        "input_tokens": 100,
        "max_output_tokens": 100,
        "price_in": 0,
        "price_out": 0,
        "min_output_tokens": 0,
    }
    args.update(kw)
    return await e.reserve(inst, "course", user, **args)


async def window(redis_url: str, inst: str, suffix: str) -> tuple[int, int]:
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        t = await r.hget(keys.limit_window(inst, suffix), "t")
    finally:
        await r.aclose()
    if t is None:
        return 0, 0
    req, tok = t.split()[:2]
    return int(req), int(tok)


async def test_two_engines_1000_reserves_admit_exactly_the_limit(redis_url: str, inst: str) -> None:
    """1,000 concurrent reserves of one member through two engines (Redis's clock) against a member
    limit of 20 requests per minute: exactly 20 are admitted, the others refused with a retry time."""
    a = QuotaEngine.from_url(redis_url, reservation_ttl=FAR_TTL)
    b = QuotaEngine.from_url(redis_url, reservation_ttl=FAR_TTL)
    try:
        await a.compile(spec(inst, {keys.limit_member("course"): LimitSpec(rpm=20)}))
        results = await asyncio.gather(*(reserve(a if i % 2 else b, inst) for i in range(1000)))
    finally:
        await a.close()
        await b.close()
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, LimitRefusal)]
    assert len(admitted) == 20 and len(refused) == 980
    assert sorted(r.rate.remaining_requests for r in admitted if r.rate) == list(range(20))
    assert all(r.rate and r.rate.limit_requests == 20 for r in admitted)
    assert {(r.what, r.node, r.limit) for r in refused} == {("requests", "m:course", 20)}
    assert all(r.retry_after_ms is not None and 1 <= r.retry_after_ms <= 60_000 for r in refused)
    assert (await window(redis_url, inst, "m:course:alice"))[0] == 20


async def test_tokens_per_minute_clamps_and_settle_corrects(
    redis_url: str, inst: str, sim: QuotaEngine, clock: Clock
) -> None:
    """A TPM limit clamps max_tokens as a budget does, refuses what cannot fit with the time its room
    frees, never-fitting requests get no retry time, and settle moves the counted tokens to the actual."""
    await sim.compile(spec(inst, {keys.limit_unit("course"): LimitSpec(tpm=1000)}))
    r1 = await reserve(sim, inst, input_tokens=100, max_output_tokens=2000)
    assert isinstance(r1, Reservation) and r1.clamped and r1.output_tokens == 900
    assert r1.rate is not None and (r1.rate.limit_tokens, r1.rate.remaining_tokens) == (1000, 0)
    assert r1.rate.reset_tokens_ms == 60_000 and r1.rate.limit_requests == -1
    clock.t += 10
    r2 = await reserve(sim, inst, input_tokens=100, max_output_tokens=10)
    assert isinstance(r2, LimitRefusal) and r2.what == "tokens" and r2.node == "u:course"
    assert r2.needed == 100 and r2.retry_after_ms == 50_000
    never = await reserve(sim, inst, input_tokens=1001, max_output_tokens=0)
    assert isinstance(never, LimitRefusal) and never.retry_after_ms is None
    s = await sim.settle(r1, 100, 50)
    assert s.status == "settled"
    assert await window(redis_url, inst, "u:course") == (1, 150)
    r3 = await reserve(sim, inst, input_tokens=100, max_output_tokens=2000)
    assert isinstance(r3, Reservation) and r3.output_tokens == 750
    clock.t += 50  # r1's second leaves the window: r3's 850 remain
    r4 = await reserve(sim, inst, input_tokens=50, max_output_tokens=500)
    assert isinstance(r4, Reservation) and r4.output_tokens == 100
    assert await window(redis_url, inst, "u:course") == (2, 1000)
    await sim.settle(r3, 10, 0)  # its second is still in the window: corrected down to 10
    assert await window(redis_url, inst, "u:course") == (2, 160)
    clock.t += 61  # everything left: a late settle corrects nothing, the window forgets
    await sim.settle(r4, 1, 1)
    assert await window(redis_url, inst, "u:course") == (0, 0)


async def test_requests_are_refunded_on_release_not_on_settle(
    inst: str, sim: QuotaEngine, clock: Clock
) -> None:
    await sim.compile(spec(inst, {keys.limit_member("course"): LimitSpec(rpm=2)}))
    r1, r2 = await reserve(sim, inst), await reserve(sim, inst)
    assert isinstance(r1, Reservation) and isinstance(r2, Reservation)
    assert isinstance(await reserve(sim, inst), LimitRefusal)
    assert isinstance(await reserve(sim, inst, user="bob"), Reservation)  # each member on their own
    await sim.settle(r1, 1, 1)
    assert isinstance(await reserve(sim, inst), LimitRefusal)  # a served request counts
    assert await sim.release(r2) == "released"  # a released one does not
    assert isinstance(await reserve(sim, inst), Reservation)


async def test_concurrency_leases_are_released_on_settle_and_expire(
    inst: str, sim: QuotaEngine, clock: Clock
) -> None:
    await sim.compile(spec(inst, {keys.limit_member("course"): LimitSpec(concurrent=1)}))
    a = await reserve(sim, inst)
    assert isinstance(a, Reservation) and a.rate is None  # no rate limit: no headers to send
    busy = await reserve(sim, inst)
    assert isinstance(busy, LimitRefusal) and busy.what == "concurrent" and busy.retry_after_ms == 1000
    await sim.settle(a, 1, 1)
    b = await reserve(sim, inst)
    assert isinstance(b, Reservation)
    clock.t += 20
    assert await sim.renew([b]) == 1  # its lease now ends at +50 s
    clock.t += 20
    assert isinstance(await reserve(sim, inst), LimitRefusal)
    clock.t += 10.001  # the lease lapsed (its gateway would have died): the slot comes back
    c = await reserve(sim, inst)
    assert isinstance(c, Reservation)


async def test_renewal_keeps_a_long_requests_lease_key_and_brings_back_a_lost_one(
    redis_url: str, inst: str
) -> None:
    """The leases ZSET expires 2 x lease after a lease was last ADDED (it collects a dead member's key).
    A request running longer than that while every other one is refused (so nothing adds a lease) must
    keep its place: renewal pushes the key's expiry out again, and re-adds a lease whose key vanished."""
    e = QuotaEngine.from_url(redis_url, reservation_ttl=FAR_TTL, limit_lease=30)
    r = aredis.Redis.from_url(redis_url)
    try:
        await e.compile(spec(inst, {keys.limit_member("course"): LimitSpec(concurrent=1)}))
        a = await reserve(e, inst)
        assert isinstance(a, Reservation)
        key = keys.limit_leases(inst, "m:course:alice")
        await r.pexpire(key, 50)  # as 2 x lease after the add: the key is about to go
        assert await e.renew([a]) == 1
        assert await r.pttl(key) > 30_000, "renewal left the key to expire under the running request"
        await r.delete(key)  # gone anyway (expired before a renewal, or lost)
        assert await e.renew([a]) == 1
        assert isinstance(await reserve(e, inst), LimitRefusal)  # the running request still counts
        assert 30_000 < await r.pttl(key) <= 60_000
    finally:
        await r.aclose()
        await e.close()


async def test_contract_ceiling_holds_charges_the_server_only_and_is_rebuilt(
    redis_url: str, inst: str, sim: QuotaEngine, clock: Clock
) -> None:
    """Each request holds its cost bound on every contract of its chain; settle charges the contract of
    the provider that served; at the ceiling the refusal is a contract refusal resetting with the month."""
    contracts = {keys.contract_node("a"): ContractSpec(1000, "month"), keys.contract_node("b", "m2"): ContractSpec(10**6, "month")}  # fmt: skip
    await sim.compile(spec(inst, contracts=contracts))
    chain = (("a", "m1"), ("b", "m2"))
    one = {"input_tokens": 300, "max_output_tokens": 0, "price_in": 1_000_000}
    held = [await reserve(sim, inst, scopes=chain, **one) for _ in range(3)]
    assert all(isinstance(r, Reservation) and r.limited and r.rate is None for r in held)
    full = await reserve(sim, inst, scopes=chain, **one)
    assert isinstance(full, Refusal) and full.kind == "contract" and full.binding_node == "c:a"
    assert (full.needed, full.available, full.metric) == (300, 100, "cost")
    assert full.resets_at is not None and full.resets_at.isoformat() == "2033-06-01T00:00:00+00:00"
    assert isinstance(await reserve(sim, inst, scopes=(("b", "m2"),), **one), Reservation)  # not a's
    r0, r1, r2 = held
    assert isinstance(r0, Reservation) and isinstance(r1, Reservation) and isinstance(r2, Reservation)
    s0 = await sim.settle(r0, 200, 0, served=("a", "m1"))
    s1 = await sim.settle(r1, 100, 0, served=("b", "m2"))
    assert s0.charge is not None and s0.charge.contracts == (("c:a", MONTH, 200),)
    assert s1.charge is not None and s1.charge.contracts == (("c:b|m2", MONTH, 100),)
    assert isinstance(await reserve(sim, inst, scopes=chain, **one), Reservation)  # 200 + 300 + 300 held
    assert isinstance(await reserve(sim, inst, scopes=chain, **one), Refusal)
    up, res, _ = await sim.redis_counters(inst)
    assert up[(MONTH, "c:a", "cost")] == 200 and res[(MONTH, "c:a", "cost")] == 600
    charges = [c for c in (s0.charge, s1.charge) if c is not None]
    assert await sim.drift(inst, recompute_counters(charges)) == []


async def test_contract_clamps_max_tokens(inst: str, sim: QuotaEngine) -> None:
    await sim.compile(spec(inst, contracts={keys.contract_node("a", "m"): ContractSpec(1000, "year")}))
    r = await reserve(
        sim, inst, scopes=(("a", "m"),), input_tokens=0, max_output_tokens=5000, price_out=1_000_000
    )
    assert isinstance(r, Reservation) and r.clamped and r.output_tokens == 1000 and r.reserved_cost == 1000


async def test_provider_windows_of_the_tiers_that_did_not_serve_are_refunded(
    redis_url: str, inst: str, sim: QuotaEngine
) -> None:
    limits = {
        keys.limit_provider("a"): LimitSpec(rpm=5),
        keys.limit_model("b", "m2"): LimitSpec(rpm=5, tpm=10**6),
    }
    await sim.compile(spec(inst, limits))
    r = await reserve(sim, inst, scopes=(("a", "m1"), ("b", "m2")))
    assert isinstance(r, Reservation) and r.rate is not None and r.rate.remaining_requests == 4
    assert await window(redis_url, inst, "p:a") == (1, 200)
    await sim.settle(r, 30, 20, served=("b", "m2"))
    assert await window(redis_url, inst, "p:a") == (0, 0)
    assert await window(redis_url, inst, "pm:b|m2") == (1, 50)


async def test_expiry_keeps_the_window_frees_the_lease_and_bills_the_contract(
    redis_url: str, inst: str, clock: Clock
) -> None:
    e = QuotaEngine.from_url(redis_url, reservation_ttl=5, clock=clock, lease_clock=clock, limit_clock=clock)
    try:
        limits = {keys.limit_member("course"): LimitSpec(rpm=10, concurrent=1)}
        await e.compile(spec(inst, limits, {keys.contract_node("a"): ContractSpec(10**6, "month")}))
        r = await reserve(e, inst, scopes=(("a", "m"),), price_in=1_000_000)
        assert isinstance(r, Reservation)
        clock.t += 6
        assert await e.sweep(inst) == 1
        held: list[Any] = []
        assert await e.drain_unsettled(inst, held.append) == 1
        assert held[0].charge.contracts == (("c:a", MONTH, 100),)
        assert await window(redis_url, inst, "m:course:alice") == (1, 200)
        assert isinstance(await reserve(e, inst), Reservation)  # the lease went with the hold
        up, res, _ = await e.redis_counters(inst)
        assert (up[(MONTH, "c:a", "cost")], res[(MONTH, "c:a", "cost")]) == (100, 0)
    finally:
        await e.close()


async def test_a_budget_refusal_on_a_limited_path_carries_the_rate_headers(
    inst: str, sim: QuotaEngine
) -> None:
    base = spec(inst, {keys.limit_member("course"): LimitSpec(rpm=5)})
    course = UnitSpec(id="course", parent="uni", rules={"cost": Rule.fixed(50)})
    await sim.compile(InstitutionSpec(id=inst, units=(base.units[0], course), limits=base.limits))
    r = await reserve(sim, inst, price_in=1_000_000)  # 100 micro-units, the course has 50
    assert isinstance(r, Refusal) and r.kind == "budget" and r.binding_node == "course"
    assert r.rate == RateInfo(5, 5, 0, -1, -1, -1)  # nothing counted: the budget refused first


async def test_no_limits_is_the_old_op(redis_url: str, inst: str, engine: QuotaEngine) -> None:
    """Without limits the R op is the old one plus the constant NL=0 NC=0, and its record and reply are
    the old ones: nothing else is computed, sent or stored."""
    await engine.compile(spec(inst))
    snap = await engine.snapshot(inst)
    assert not snap.limited and snap.limit_segment("course", (("a", "m"),), int(NOW * 1000)) is None
    sent: list[tuple[int, bytes, Any]] = []
    submit = engine._batcher.submit

    def spy(*args: Any) -> Any:
        fut = submit(*args)
        sent.append((args[1], args[2], fut))
        return fut

    engine._batcher.submit = spy  # type: ignore[method-assign]
    r = await reserve(engine, inst, scopes=(("a", "m"),), meta="{}")
    assert isinstance(r, Reservation) and r.rate is None and not r.limited and r.lkeys == ()
    nhead, head, fut = sent[0]
    old = b"".join((_R, bulk(snap.token), bulk(f"+{int(FAR_TTL * 1000)}"), bulk(r.id)))
    assert nhead == 12 and head.startswith(old) and head.endswith(bulk("{}") + _NO_LIMITS)
    assert len(fut.result()) == 10
    rr = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        rec = await rr.hget(keys.records(inst), r.id)
    finally:
        await rr.aclose()
    assert rec is not None and len(rec.split("\n")) == 3


# ---- model-based: ops.lua against quota/limits.py -------------------------------------------------------

SCOPES = ((("a", "m1"),), (("b", "m2"),), (("a", "m1"), ("b", "m2")))
LEASE_MS = 30_000
HOLD_TTL = 40.0


def limit_st() -> st.SearchStrategy[LimitSpec]:
    opt = st.one_of  # each limit absent or small enough to bind
    return st.builds(
        LimitSpec,
        rpm=opt(st.none(), st.integers(1, 6)),
        tpm=opt(st.none(), st.integers(50, 1500)),
        concurrent=opt(st.none(), st.integers(1, 3)),
    ).filter(lambda s: any(v is not None for v in (s.rpm, s.tpm, s.concurrent)))


class LimitMachine(RuleBasedStateMachine):
    redis_url = "redis://127.0.0.1:6379/0"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.inst = new_inst()
        self.clock = Clock()
        self.e = QuotaEngine.from_url(
            self.redis_url,
            reservation_ttl=HOLD_TTL,
            clock=self.clock,
            lease_clock=self.clock,
            limit_clock=self.clock,
            limit_lease=LEASE_MS / 1000,
        )
        self.ref = LimitModel()
        self.live: dict[str, Reservation] = {}
        self.deadline: dict[str, int] = {}
        self.scopes: dict[str, tuple[tuple[str, str], ...]] = {}
        self.sync = redis.Redis.from_url(self.redis_url, decode_responses=True)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def teardown(self) -> None:
        try:
            self.run(self.e.close())
        finally:
            self.loop.close()
            self.sync.close()
            wipe(self.redis_url, self.inst)

    @initialize(data=st.data())
    def build(self, data: st.DataObject) -> None:
        nodes = ["m:course", "m:uni", "u:course", "p:a", "pm:b|m2", "pm:a|m1"]
        chosen = data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=4, unique=True))
        limits = {n: data.draw(limit_st()) for n in chosen}
        ceil = st.one_of(st.none(), st.integers(200, 3000))
        contracts = {}
        for node in ("c:a", "c:b|m2", "c:b"):
            c = data.draw(ceil)
            if c is not None:
                contracts[node] = ContractSpec(c, data.draw(st.sampled_from(["month", "year"])))
        self.clock.t = NOW + data.draw(st.integers(0, 999)) / 1000
        self.run(self.e.compile(spec(self.inst, limits, contracts)))

    def _entries(self, user: str, scopes: Any) -> tuple[tuple[Entry, ...], tuple[Con, ...], Any]:
        snap = self.run(self.e.snapshot(self.inst))
        seg = snap.limit_segment("course", scopes, self.now_ms())
        if seg is None:
            return (), (), None
        entries = tuple(
            Entry(keys.limit_member_key(n, user) if m else n, *snap.limits[n])
            for n, m in zip(seg.nodes, seg.member, strict=True)
        )
        cons = tuple(
            Con(c, w.key, snap.contracts[c][1])
            for c, w in zip(seg.contracts, seg.contract_windows, strict=True)
        )
        return entries, cons, seg

    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(["alice", "bob"]))
        scopes = data.draw(st.sampled_from(SCOPES))
        tin, nout = data.draw(st.integers(0, 300)), data.draw(st.integers(0, 600))
        nmin = data.draw(st.integers(0, 50))
        pin, pout = (
            data.draw(st.sampled_from([0, 1_000_000, 3_000_000])),
            data.draw(st.sampled_from([0, 2_000_000])),
        )
        entries, cons, seg = self._entries(user, scopes)
        before = {
            e.suffix: self.ref.windows[e.suffix].totals()[1]
            for e in entries
            if e.tpm and e.suffix in self.ref.windows
        }
        got = self.run(self.e.reserve(self.inst, "course", user, input_tokens=tin, max_output_tokens=nout,
                                      price_in=pin, price_out=pout, min_output_tokens=nmin, scopes=scopes))  # fmt: skip
        rid = got.id if isinstance(got, Reservation) else "refused"
        want = self.ref.reserve(rid, entries, cons, tin, nout, (pin, pout), nmin, self.now_ms(), LEASE_MS)
        if isinstance(want, Admit):
            assert isinstance(got, Reservation), (want, got)
            assert (got.output_tokens, got.clamped, got.reserved_cost, got.reserved_tokens) == (
                want.output_tokens, want.clamped, want.cost, want.tokens)  # fmt: skip
            rate = None if want.rate[0] < 0 and want.rate[3] < 0 else RateInfo(*want.rate)
            assert got.rate == rate
            for e in entries:  # an admission never counts tokens past a limit that had room
                if e.tpm:
                    assert self.ref.windows[e.suffix].totals()[1] <= max(e.tpm, before.get(e.suffix, 0))
            self.live[got.id] = got
            self.deadline[got.id] = self.now_ms() + int(HOLD_TTL * 1000)
            self.scopes[got.id] = scopes
        elif isinstance(want, Limited):
            assert isinstance(got, LimitRefusal), (want, got)
            assert (got.what, got.node, got.limit, got.needed) == (
                want.what, seg.nodes[want.index], want.limit, want.needed)  # fmt: skip
            assert got.retry_after_ms == (None if want.retry_ms < 0 else want.retry_ms)
            assert got.rate == RateInfo(*want.rate)
        else:
            assert isinstance(got, Refusal) and got.kind == "contract", (want, got)
            assert (got.binding_node, got.needed, got.available) == (
                cons[want.index].node,
                want.needed,
                want.room,
            )

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.live)))
        r = self.live.pop(rid)
        tin, tout = data.draw(st.integers(0, 400)), data.draw(st.integers(0, 700))
        served = data.draw(st.one_of(st.none(), st.sampled_from(self.scopes[rid])))
        s = self.run(self.e.settle(r, tin, tout, served=served))
        assert s.status == "settled" and s.charge is not None
        cost = -(-(tin * r.price_in + tout * r.price_out) // 1_000_000)
        want = self.ref.settle(
            rid, cost, tin + tout, "" if served is None else "|".join(served), self.now_ms()
        )
        assert list(s.charge.contracts) == want

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.live)))
        assert self.run(self.e.release(self.live.pop(rid))) == "released"
        self.ref.release(rid, self.now_ms())

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.live)))
        assert self.run(self.e.renew([self.live[rid]])) == 1
        self.deadline[rid] = max(self.deadline[rid], self.now_ms() + int(HOLD_TTL * 1000))
        self.ref.renew(rid, self.now_ms() + LEASE_MS)

    @rule(ms=st.one_of(st.integers(0, 2000), st.integers(0, 70_000)))
    def advance(self, ms: int) -> None:
        self.clock.t += ms / 1000

    @rule()
    def sweep(self) -> None:
        due = sorted(rid for rid in self.live if self.deadline[rid] <= self.now_ms())
        assert self.run(self.e.sweep(self.inst)) == len(due)
        held: list[Any] = []
        self.run(self.e.drain_unsettled(self.inst, held.append))
        got = {h.reservation_id: list(h.charge.contracts) for h in held}
        assert got == {rid: self.ref.expire(rid) for rid in due}
        for rid in due:
            del self.live[rid]

    @invariant()
    def redis_matches_the_reference(self) -> None:
        now = self.now_ms()
        sec = now // 1000
        for suffix, w in self.ref.windows.items():
            raw = self.sync.hgetall(keys.limit_window(self.inst, suffix))
            buckets = {int(f): tuple(map(int, v.split())) for f, v in raw.items() if f != "t"}
            if "t" in raw:
                req, tok = map(int, raw["t"].split()[:2])
                assert (req, tok) == (
                    sum(b[0] for b in buckets.values()),
                    sum(b[1] for b in buckets.values()),
                )
            assert {s: b for s, b in buckets.items() if s > sec - 60} == {
                s: tuple(b) for s, b in w.buckets.items() if s > sec - 60}  # fmt: skip
        for suffix, lease in self.ref.leases.items():
            z = dict(self.sync.zrange(keys.limit_leases(self.inst, suffix), 0, -1, withscores=True))
            assert {r: int(d) for r, d in z.items() if d > now} == {r: d for r, d in lease.items() if d > now}
        up, res, _ = self.run(self.e.redis_counters(self.inst))
        for (pkey, node), (u, h) in self.ref.contracts.items():
            assert (up.get((pkey, node, "cost"), 0), res.get((pkey, node, "cost"), 0)) == (u, h)


def test_redis_agrees_with_the_limits_reference(redis_url: str) -> None:
    LimitMachine.redis_url = redis_url
    run_state_machine_as_test(
        LimitMachine,
        settings=settings(
            max_examples=int(os.environ.get("QUOTA_LIMIT_EXAMPLES", "60")),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        ),
    )
