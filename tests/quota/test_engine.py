"""The engine's behaviours around the waterfall: clamping, settle outcomes, expiry, edits reaching
other replicas, Redis losing its data, ledger rebuild and drift, explain, pruning, batching."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import redis

from cli.services.process import free_port
from cli.services.redis import start_redis
from quota import (
    Charge,
    ExtraSpec,
    InstitutionNotLoaded,
    InstitutionSpec,
    MemberCap,
    QuotaEngine,
    Refusal,
    Reservation,
    Rule,
    UnitSpec,
    keys,
    recompute_counters,
)
from tests.quota.conftest import FAR_TTL, new_inst, wipe

NOW = datetime(2026, 11, 10, 15, 0, tzinfo=UTC).timestamp()
MICRO = 1_000_000


def tree(
    inst: str, course_cost: int = 1_000, course_tokens: int | None = None, **course: object
) -> InstitutionSpec:
    course_rules = {"cost": Rule.fixed(course_cost)}
    if course_tokens is not None:
        course_rules["tokens"] = Rule.fixed(course_tokens)
    return InstitutionSpec(
        id=inst,
        timezone="America/Chicago",
        units=(
            UnitSpec(id="uni", parent=None, name="University", rules={"cost": Rule.fixed(10**9)}),
            UnitSpec(id="dept", parent="uni", name="Department", rules={"cost": Rule.percent(10)}),
            UnitSpec(id="course", parent="dept", name="Course", rules=course_rules, **course),  # type: ignore[arg-type]
        ),
    )


async def reserve(engine: QuotaEngine, inst: str, user: str = "ann", **kw: int) -> Reservation | Refusal:
    """A request on the course at NOW; 1 micro-unit per token unless told otherwise."""
    args = {"input_tokens": 0, "max_output_tokens": 0, "price_in": MICRO, "price_out": MICRO} | kw
    return await engine.reserve(inst, "course", user, now=NOW, **args)


async def test_clamps_max_tokens_to_what_fits(engine: QuotaEngine, inst: str) -> None:
    await engine.compile(tree(inst, course_cost=100))
    r = await reserve(engine, inst, input_tokens=40, max_output_tokens=500)
    assert isinstance(r, Reservation)
    assert (r.output_tokens, r.clamped, r.reserved_cost, r.reserved_tokens) == (60, True, 100, 100)
    assert r.remaining["cost"] is not None and (r.remaining["cost"].node, r.remaining["cost"].room) == (
        "course",
        0,
    )
    assert r.remaining["tokens"] is None  # nothing caps tokens here
    await engine.release(r)
    # below the minimum worth clamping to (16 by default): refused, naming the course
    await engine.settle(await reserve(engine, inst, input_tokens=90), 90, 0)  # type: ignore[arg-type]
    refused = await reserve(engine, inst, input_tokens=1, max_output_tokens=500)
    assert isinstance(refused, Refusal)
    assert (refused.binding_node, refused.needed, refused.available) == ("course", 17, 10)


async def test_clamp_uses_exact_integer_cost_rounding(engine: QuotaEngine, inst: str) -> None:
    await engine.compile(tree(inst, course_cost=7))
    # output price 0.6 per token: n tokens cost ceil(0.6 n); 11 tokens cost 7 (6.6 -> 7), 12 would cost 8
    r = await reserve(
        engine, inst, max_output_tokens=1000, price_in=0, price_out=600_000, min_output_tokens=1
    )
    assert isinstance(r, Reservation) and (r.output_tokens, r.reserved_cost) == (11, 7)


async def test_tokens_cap_clamps_and_refuses(engine: QuotaEngine, inst: str) -> None:
    await engine.compile(tree(inst, course_tokens=300))
    r = await reserve(engine, inst, input_tokens=250, max_output_tokens=100, price_in=0, price_out=0)
    assert isinstance(r, Reservation) and (r.output_tokens, r.clamped) == (50, True)
    refused = await reserve(engine, inst, input_tokens=40, max_output_tokens=100, price_in=0, price_out=0)
    assert isinstance(refused, Refusal) and refused.metric == "tokens" and refused.available == 0


async def test_settle_outcomes(engine: QuotaEngine, inst: str) -> None:
    await engine.compile(tree(inst, course_cost=100))
    r = await reserve(engine, inst, input_tokens=10, max_output_tokens=20)
    assert isinstance(r, Reservation)
    s = await engine.settle(r, 10, 5)  # less than reserved: the rest is given back
    assert (s.status, s.cost, s.charged["cost"], s.overage["cost"]) == ("settled", 15, 15, 0)
    # a retry (the first reply was lost) gets the first answer, and nothing more is charged
    again = await engine.settle(r, 10, 5)
    assert again == s
    assert await engine.release(r) == "gone"
    # the provider overran max_tokens beyond what the budget can fund: charge what fits, report the rest
    big = await reserve(engine, inst, input_tokens=10, max_output_tokens=70)
    assert isinstance(big, Reservation) and big.reserved_cost == 80
    over = await engine.settle(big, 10, 200)
    assert (over.charged["cost"], over.overage["cost"]) == (85, 125)
    e = await engine.explain(inst, "course", "ann", now=NOW)
    assert e.nodes[1].metrics["cost"].used == 100 == e.nodes[1].metrics["cost"].cap


async def test_expired_reservation_is_billed_at_its_hold_and_a_late_settle_adds_nothing(
    redis_url: str, inst: str
) -> None:
    future = time.time() + 10 * 365 * 86400  # ahead of any real-time sweeper sharing this Redis
    lease = [future]  # deadlines follow Redis's clock; this test simulates it
    engine = QuotaEngine.from_url(redis_url, reservation_ttl=60, lease_clock=lambda: lease[0])
    try:
        await engine.compile(tree(inst, course_cost=100))
        r = await engine.reserve(inst, "course", "ann", input_tokens=30, max_output_tokens=0, price_in=MICRO,
                                 price_out=0, now=future, min_output_tokens=0)  # fmt: skip
        assert isinstance(r, Reservation)
        lease[0] = future + 59
        assert await engine.sweep(inst) == 0
        lease[0] = future + 61
        assert await engine.sweep(inst) == 1
        e = await engine.explain(inst, "course", "ann", now=future + 61)
        # expiry bills the hold: nobody can report what was served
        assert (e.nodes[1].metrics["cost"].reserved, e.nodes[1].metrics["cost"].used) == (0, 30)
        late = await engine.settle(r, 20, 0)
        assert (late.status, late.charged["cost"], late.overage["cost"], late.charge) == ("late", 0, 0, None)
        assert await engine.settle(r, 20, 0) == late  # a retry gets the same answer (never 'gone': overage)
        e = await engine.explain(inst, "course", "ann", now=future + 61)
        assert (e.nodes[1].metrics["cost"].reserved, e.nodes[1].metrics["cost"].used) == (0, 30)
    finally:
        await engine.close()


async def test_an_expired_hold_of_the_previous_release_is_released_not_billed(
    redis_url: str, inst: str
) -> None:
    """During a rolling upgrade a gateway of the previous release (whose records have no usage-event line)
    settles its own late holds and that release's script charges what was used: billing the hold at expiry
    as well charged one request twice, and wrote a ledger row with no user or unit (attack review)."""
    future = time.time() + 10 * 365 * 86400
    lease = [future]
    engine = QuotaEngine.from_url(redis_url, reservation_ttl=60, lease_clock=lambda: lease[0])
    try:
        await engine.compile(tree(inst, course_cost=100))
        r = await engine.reserve(inst, "course", "ann", input_tokens=30, max_output_tokens=0, price_in=MICRO,
                                 price_out=0, now=future, min_output_tokens=0)  # fmt: skip
        assert isinstance(r, Reservation)
        record = await engine.redis.hget(keys.records(inst), r.id)
        assert record is not None and record.count("\n") == 2
        await engine.redis.hset(keys.records(inst), r.id, "\n".join(record.split("\n")[:2]))  # as it wrote
        lease[0] = future + 61
        assert await engine.sweep(inst) == 1
        e = await engine.explain(inst, "course", "ann", now=future + 61)
        assert (e.nodes[1].metrics["cost"].reserved, e.nodes[1].metrics["cost"].used) == (0, 0)
        assert await engine.redis.llen(keys.unsettled(inst)) == 0
    finally:
        await engine.close()


async def test_edit_applies_to_the_next_request_on_another_replica(
    engine: QuotaEngine, redis_url: str, inst: str
) -> None:
    spec = tree(inst, course_cost=100)
    await engine.compile(spec)
    other = QuotaEngine.from_url(redis_url, reservation_ttl=FAR_TTL)
    try:
        assert isinstance(await reserve(other, inst, input_tokens=100), Reservation)  # caches the snapshot
        lowered = replace(spec, units=tuple(replace(u, rules={"cost": Rule.fixed(150)}) if u.id == "course" else u
                                            for u in spec.units))  # fmt: skip
        token = await engine.compile(lowered, changed=["course"])
        assert other.cached_snapshot(inst) is not None  # it has not heard of the edit...
        refused = await reserve(other, inst, input_tokens=60)  # ...yet decides with the new cap
        assert isinstance(refused, Refusal) and refused.available == 50
        snap = other.cached_snapshot(inst)
        assert snap is not None and snap.token == token
    finally:
        await other.close()


async def test_invalidation_is_published(engine: QuotaEngine, redis_url: str, inst: str) -> None:
    spec = tree(inst)
    await engine.compile(spec)
    listener = QuotaEngine.from_url(redis_url)
    ready = asyncio.Event()
    task = asyncio.create_task(listener.listen_invalidations(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        old = await listener.snapshot(inst)
        await engine.compile(replace(spec, units=(*spec.units[:2], replace(spec.units[2], member_count=3))))
        deadline = time.monotonic() + 10
        while listener.cached_snapshot(inst) is old:
            assert time.monotonic() < deadline, "no invalidation arrived"
            await asyncio.sleep(0.05)
        assert listener.cached_snapshot(inst) is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await listener.close()


async def test_member_caps_fair_share_follows_member_count(engine: QuotaEngine, inst: str) -> None:
    spec = tree(inst, course_cost=90, member_cap={"cost": MemberCap.fair_share("1.5")}, member_count=4)
    await engine.compile(spec)
    e = await engine.explain(inst, "course", "ann", now=NOW)
    assert e.nodes[0].node == "member(ann,course)" and e.nodes[0].metrics["cost"].cap == 33  # 1.5*90/4
    more = replace(spec, units=(*spec.units[:2], replace(spec.units[2], member_count=9)))
    await engine.compile(more, changed=["course"])
    e = await engine.explain(inst, "course", "ann", now=NOW)
    assert e.nodes[0].metrics["cost"].cap == 15


async def test_extras_pay_only_inside_their_window(engine: QuotaEngine, inst: str) -> None:
    grant = ExtraSpec("grant-1", {"cost": 50}, date(2026, 12, 1), date(2026, 12, 31), "GR-1")
    await engine.compile(tree(inst, course_cost=10, extras=(grant,)))
    nov = await reserve(engine, inst, input_tokens=30)
    assert isinstance(nov, Refusal) and nov.available == 10
    dec = datetime(2026, 12, 1, 6, 0, tzinfo=UTC).timestamp()  # local midnight in Chicago
    r = await engine.reserve(inst, "course", "ann", input_tokens=30, max_output_tokens=0, price_in=MICRO,
                             price_out=0, now=dec)  # fmt: skip
    assert isinstance(r, Reservation)
    s = await engine.settle(r, 30, 0)
    assert s.charge is not None and s.charge.allocation["cost"] == 10
    assert s.charge.extras["cost"] == (("grant-1", 1, 20),)
    e = await engine.explain(inst, "course", "ann", now=dec)
    (x,) = e.nodes[1].metrics["cost"].extras
    assert (x.used, x.valid_now, x.chargeback) == (20, True, "GR-1")
    assert e.nodes[2].metrics["cost"].used == 10  # the extra's part is not charged to the department


async def test_lost_redis_without_a_loader_refuses_to_guess(
    engine: QuotaEngine, redis_url: str, inst: str
) -> None:
    await engine.compile(tree(inst))
    assert await engine.is_compiled(inst)
    wipe(redis_url, inst)
    assert not await engine.is_compiled(inst)
    with pytest.raises(InstitutionNotLoaded):
        await reserve(engine, inst, input_tokens=1)


async def test_flushed_redis_is_rebuilt_from_the_ledger(private_redis_url: str) -> None:
    inst = new_inst()
    spec = tree(inst, course_cost=100)
    ledger: list[Charge] = []

    async def loader(name: str) -> tuple[InstitutionSpec, Iterable[Charge]]:
        assert name == inst
        return spec, list(ledger)

    a = QuotaEngine.from_url(private_redis_url, loader=loader, reservation_ttl=FAR_TTL)
    b = QuotaEngine.from_url(private_redis_url, loader=loader, reservation_ttl=FAR_TTL)
    try:
        await a.compile(spec)
        for _ in range(3):
            s = await a.settle(await reserve(a, inst, input_tokens=20), 20, 0)  # type: ignore[arg-type]
            assert s.charge is not None
            ledger.append(s.charge)
        pending = await reserve(a, inst, input_tokens=5)
        assert isinstance(pending, Reservation)
        await a.redis.flushall()
        await a.redis.script_flush()
        # both replicas find Redis empty at once: one rebuild wins, both serve with the ledger's numbers
        r1, r2 = await asyncio.gather(reserve(a, inst, input_tokens=20), reserve(b, inst, input_tokens=20))
        assert isinstance(r1, Reservation) and isinstance(r2, Reservation)
        e = await b.explain(inst, "course", "ann", now=NOW)
        assert (e.nodes[1].metrics["cost"].used, e.nodes[1].metrics["cost"].reserved) == (60, 40)
        assert (await a.settle(pending, 5, 0)).status == "gone"  # its record died with Redis
        assert await a.drift(inst, recompute_counters(ledger)) == []
    finally:
        await a.close()
        await b.close()


async def test_redis_back_with_older_data_is_rebuilt_before_its_first_request(tmp_path: Path) -> None:
    """Redis restarts from an older append-only file (a lost tail, a lagging replica promoted): the compile
    token survived, so the first request was judged against counters that miss the last spend (a
    Reservation at 40 of a spent 100). Every new connection now checks the server's run_id before its
    first command, and the institution is rebuilt from the ledger first. Real Redis restarted."""
    port, data = free_port(), tmp_path / "redis"
    server = start_redis(data, port, persist=True)
    inst, ledger = new_inst(), list[Charge]()
    spec = tree(inst, course_cost=100)

    async def loader(name: str) -> tuple[InstitutionSpec, Iterable[Charge]]:
        return spec, list(ledger)

    async def spend() -> None:
        s = await engine.settle(await reserve(engine, inst, input_tokens=20), 20, 0)  # type: ignore[arg-type]
        assert s.charge is not None
        ledger.append(s.charge)

    engine = QuotaEngine.from_url(f"redis://127.0.0.1:{port}/0", loader=loader, reservation_ttl=FAR_TTL)
    try:
        await engine.compile(spec)
        await spend()
        await spend()
        await asyncio.sleep(2.5)  # the append-only file is written every second
        shutil.copytree(data, tmp_path / "older", ignore=shutil.ignore_patterns("redis.log"))
        for _ in range(3):
            await spend()
        assert isinstance(await reserve(engine, inst, input_tokens=20), Refusal)  # 100 of 100 spent
        server.stop()
        shutil.rmtree(data)
        shutil.copytree(tmp_path / "older", data)
        server = start_redis(data, port, persist=True)
        after = await reserve(engine, inst, input_tokens=20)
        assert isinstance(after, Refusal), (
            after
        )  # before the fix: a Reservation (40 of 100 in the older file)
        e = await engine.explain(inst, "course", "ann", now=NOW)
        assert e.nodes[-1].metrics["cost"].used == 100  # rebuilt from the ledger
    finally:
        await engine.close()
        server.stop()


async def test_drift_is_reported_and_force_rebuild_keeps_holds(
    engine: QuotaEngine, redis_url: str, inst: str
) -> None:
    spec = tree(inst, course_cost=1_000)
    await engine.compile(spec)
    ledger = []
    for amount in (30, 45):
        s = await engine.settle(await reserve(engine, inst, input_tokens=amount), amount, 0)  # type: ignore[arg-type]
        ledger.append(s.charge)
    inflight = await reserve(engine, inst, input_tokens=7)
    assert isinstance(inflight, Reservation)
    values = recompute_counters(c for c in ledger if c is not None)
    assert await engine.drift(inst, values) == []
    # someone tampers with Redis: the course claims 999 spent
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = keys.counters(inst, inflight.period_keys[1])
    _, cr, tu, tr = keys.unpack_counters(r.hget(key, "course"))
    r.hset(key, "course", f"999 {cr} {tu} {tr}")
    r.close()
    (d,) = await engine.drift(inst, values)
    assert (d.kind, d.name, d.metric, d.redis, d.ledger) == ("unit", "course", "cost", 999, 75)
    assert await engine.rebuild(spec, values) is False  # compiled already: a plain rebuild does nothing
    assert await engine.rebuild(spec, values, force=True) is True
    assert await engine.drift(inst, values) == []
    e = await engine.explain(inst, "course", "ann", now=NOW)
    assert (e.nodes[1].metrics["cost"].used, e.nodes[1].metrics["cost"].reserved) == (75, 7)
    assert (await engine.settle(inflight, 7, 0)).status == "settled"


async def test_prune_drops_old_periods_only(redis_url: str, inst: str) -> None:
    engine = QuotaEngine.from_url(redis_url, counter_retention=31 * 86400, reservation_ttl=FAR_TTL)
    try:
        await engine.compile(tree(inst))
        for month in (1, 3):
            at = datetime(2026, month, 15, tzinfo=UTC).timestamp()
            r = await engine.reserve(inst, "course", "ann", input_tokens=1, max_output_tokens=0, price_in=MICRO,
                                     price_out=0, now=at)  # fmt: skip
            assert isinstance(r, Reservation)
            await engine.settle(r, 1, 0)
        assert await engine.prune(inst, now=datetime(2026, 3, 20, tzinfo=UTC).timestamp()) == 1
        up, _, _ = await engine.redis_counters(inst)
        assert {k[0] for k in up} == {"m:2026-03"}
    finally:
        await engine.close()


async def test_concurrent_requests_of_several_institutions_share_a_flush(
    engine: QuotaEngine, redis_url: str
) -> None:
    insts = [new_inst() for _ in range(3)]
    try:
        for i in insts:
            await engine.compile(tree(i, course_cost=500))
        results = await asyncio.gather(
            *(engine.reserve(i, "course", f"u{n}", input_tokens=10, max_output_tokens=0, price_in=MICRO, price_out=0,
                             now=NOW) for i in insts for n in range(60))
        )  # fmt: skip
        assert sum(isinstance(r, Reservation) for r in results) == 3 * 50  # 500 / 10 per institution
        settled = await asyncio.gather(
            *(engine.settle(r, 10, 0) for r in results if isinstance(r, Reservation))
        )
        assert all(s.status == "settled" for s in settled)
        for i in insts:
            assert (await engine.explain(i, "course", "x", now=NOW)).available["cost"] == 0
    finally:
        for i in insts:
            wipe(redis_url, i)


async def test_input_validation(engine: QuotaEngine, inst: str) -> None:
    await engine.compile(tree(inst))
    with pytest.raises(ValueError):
        await reserve(engine, inst, input_tokens=-1)
    with pytest.raises(ValueError):
        await reserve(engine, inst, input_tokens=10**12, price_in=10**8)  # beyond exact double arithmetic
    with pytest.raises(KeyError):
        await engine.reserve(
            inst, "nope", "ann", input_tokens=1, max_output_tokens=1, price_in=0, price_out=0
        )


async def test_ids_that_look_like_internal_names(engine: QuotaEngine, inst: str) -> None:
    units = (
        UnitSpec(id="ver", parent=None, rules={"cost": Rule.fixed(100)}),
        UnitSpec(id="list", parent="ver", rules={"cost": Rule.fixed(50)}),
        UnitSpec(id="snap", parent="list", member_cap={"cost": MemberCap.fixed(30)}),
    )
    await engine.compile(InstitutionSpec(id=inst, units=units))
    reservations = await asyncio.gather(
        *(engine.reserve(inst, "snap", user, input_tokens=20, max_output_tokens=0, price_in=MICRO, price_out=0,
                         min_output_tokens=0, now=NOW) for user in ("list", "ver", "a b", "ver"))
    )  # fmt: skip
    granted = [r for r in reservations if isinstance(r, Reservation)]
    assert [r.user for r in granted] == ["list", "ver"]  # 50 at "list" fits two of 20
    refused = [r for r in reservations if isinstance(r, Refusal)]
    # the second "ver" request meets its own member cap first (30, 20 held): the lowest node binds
    assert [(r.user, r.binding_node) for r in refused] == [("a b", "list"), ("ver", "member(ver,snap)")]
    for r in granted:
        await engine.settle(r, 20, 0)
    e = await engine.explain(inst, "snap", "list", now=NOW)
    assert [(n.node, n.metrics["cost"].used) for n in e.nodes] == [
        ("member(list,snap)", 20), ("snap", 40), ("list", 40), ("ver", 40),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        await engine.reserve(inst, "snap", "tab\there", input_tokens=1, max_output_tokens=0, price_in=0,
                             price_out=0)  # fmt: skip


async def test_a_cancelled_reserve_gives_its_hold_back(engine: QuotaEngine, inst: str) -> None:
    await engine.compile(tree(inst, course_cost=100))
    await engine.snapshot(inst)
    task = asyncio.create_task(reserve(engine, inst, input_tokens=60))
    await asyncio.sleep(0)  # the reserve is queued for the next flush; cancel the caller before it runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while (await engine.explain(inst, "course", "ann", now=NOW)).nodes[1].metrics["cost"].reserved:
        assert time.monotonic() < deadline, "the orphaned hold was never given back"
        await asyncio.sleep(0.02)
    assert isinstance(await reserve(engine, inst, input_tokens=100), Reservation)


async def test_a_kept_connection_redis_closed_between_batches_is_not_used(
    engine: QuotaEngine, inst: str, redis_url: str
) -> None:
    """The batcher keeps its Redis connection between batches; if Redis closed it meanwhile (a restart,
    an idle timeout, CLIENT KILL), the next request must get a fresh one, not a ConnectionError."""
    await engine.compile(tree(inst))
    first = await reserve(engine, inst, input_tokens=1)
    assert isinstance(first, Reservation)
    kept = engine._batcher._idle
    assert len(kept) == 1
    local = kept[0]._writer.get_extra_info("sockname")
    admin = redis.Redis.from_url(redis_url)
    assert admin.client_kill(f"{local[0]}:{local[1]}")
    admin.close()
    await asyncio.sleep(0.2)  # the event loop reads the end of the killed connection
    second = await reserve(engine, inst, input_tokens=1)
    assert isinstance(second, Reservation)
    await engine.release(first)
    await engine.release(second)


async def test_a_renewed_hold_outlives_its_first_deadline_and_a_settled_one_is_not_renewed(
    redis_url: str, inst: str
) -> None:
    """A stream longer than the TTL renews its lease; a sweeper running past the first deadline must not
    take its room (the hold stays, nothing is billed twice)."""
    future = time.time() + 10 * 365 * 86400  # ahead of any real-time sweeper sharing this Redis
    lease = [future]  # deadlines follow Redis's clock; this test simulates it
    engine = QuotaEngine.from_url(redis_url, reservation_ttl=60, lease_clock=lambda: lease[0])
    try:
        await engine.compile(tree(inst, course_cost=100))
        r = await engine.reserve(inst, "course", "ann", input_tokens=30, max_output_tokens=0, price_in=MICRO,
                                 price_out=0, now=future, min_output_tokens=0)  # fmt: skip
        assert isinstance(r, Reservation)
        lease[0] = future + 50
        assert await engine.renew([r]) == 1  # deadline now future + 110
        lease[0] = future + 61
        assert await engine.sweep(inst) == 0
        e = await engine.explain(inst, "course", "ann", now=future + 61)
        assert (e.nodes[1].metrics["cost"].reserved, e.nodes[1].metrics["cost"].used) == (30, 0)
        lease[0] = future
        assert await engine.renew([r]) == 1  # never moves a deadline back
        lease[0] = future + 100
        assert await engine.sweep(inst) == 0
        s = await engine.settle(r, 10, 0)
        assert (s.status, s.charged["cost"]) == ("settled", 10)
        assert await engine.renew([r]) == 0
        lease[0] = future + 1000
        assert await engine.sweep(inst) == 0
        e = await engine.explain(inst, "course", "ann", now=future + 100)
        assert (e.nodes[1].metrics["cost"].reserved, e.nodes[1].metrics["cost"].used) == (0, 10)
    finally:
        await engine.close()


async def test_connections_opened_together_check_the_epoch_once(private_redis_url: str) -> None:
    """Every new connection checks Redis's epoch, one script per institution; the connections a burst opens
    at once (after a restart, at start-up) share one check. Before, each ran its own: 20 connections and
    50 institutions were 1,000 scripts (an attack review's 300 institutions and 64 connections: 19,200)."""
    admin = redis.Redis.from_url(private_redis_url)
    for i in range(50):
        admin.hset(keys.cfg(f"epoch-{i}"), mapping={"ver": "v", "rid": "an-earlier-server"})
        admin.sadd(keys.INSTITUTIONS, f"epoch-{i}")
    admin.config_resetstat()
    engine = QuotaEngine.from_url(private_redis_url)
    try:
        await asyncio.gather(*[engine.redis.execute_command("BLPOP", "nothing", 0.2) for _ in range(20)])
        scripts_run = int(admin.info("commandstats").get("cmdstat_eval", {}).get("calls", 0))
        assert scripts_run == 50, scripts_run
        assert admin.hget(keys.cfg("epoch-7"), "ver") is None  # written under another server: rebuilt first
    finally:
        await engine.close()
        admin.close()


async def test_an_edit_does_not_put_caps_back_over_counters_the_epoch_check_disowned(
    engine: QuotaEngine, redis_url: str, inst: str
) -> None:
    """An edit checks that the institution is compiled, then recompiles; between the two, Redis may come back
    with older data and the epoch check drop the compile token. A full recompile then wrote a new token
    (and the current run id) over the older counters, which no check would disown again (attack review).
    An edit over an institution that must exist now writes nothing and says so; the caller rebuilds."""
    await engine.compile(tree(inst))
    assert await engine.is_compiled(inst)
    redis.Redis.from_url(redis_url).hdel(keys.cfg(inst), "ver")  # what the epoch check does
    with pytest.raises(InstitutionNotLoaded):
        await engine.compile(tree(inst, course_cost=2_000), existing=True)
    assert not await engine.is_compiled(inst)  # before: compiled again over the older counters
    with pytest.raises(InstitutionNotLoaded):
        await engine.compile(tree(inst, course_cost=2_000), ["course"], existing=True)
    assert not await engine.is_compiled(inst)
