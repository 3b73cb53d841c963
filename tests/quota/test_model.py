"""Model-based test: Redis (ops.lua via QuotaEngine) against the plain-Python reference of the spec.

Hypothesis builds a random tree (fixed / percent / inherit rules on both
metrics, periods, member caps, extras with validity windows) and drives
reservations, settlements (at, under and over what was reserved), releases,
clock moves, sweeps of expired reservations, budget edits compiled by another
replica, and a Redis that loses all its data and is rebuilt from the ledger.
The reference is quota/waterfall.py over plain dicts (with quota/caps.py and
quota/periods.py), and after every step the test demands:

* every counter in Redis equals the reference's (spend and holds, nodes and extras);
* every reply (grant, clamp, refusal with binding node and reset, settlement
  with its exact charge and overage) equals the reference's;
* every unit's settled + reserved per period <= its cap, every extra's
  used + reserved <= its amount (a cap lowered below what was already spent
  may leave a node above it, but no step may add to such a node);
* the counters equal the sum of the per-request charges (quota.rebuild) and
  the engine reports no drift against them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis
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

from quota import Charge, QuotaEngine, Refusal, Reservation, keys
from quota.caps import resolve_caps, resolve_member_caps
from quota.model import METRICS, ExtraSpec, InstitutionSpec, MemberCap, Metric, Rule, Semester, UnitSpec
from quota.periods import Calendar, Window, local_midnight, window
from quota.rebuild import recompute_counters
from quota.waterfall import (
    Deny,
    Grant,
    Plan,
    apply_plan,
    capacity,
    cost_of,
    decide,
    extra_rooms,
    limiting,
    plan,
    rooms_on_path,
)
from tests.quota.conftest import new_inst, wipe

TTL = 3600.0
XP_RETENTION = 2 * 86400.0
# Simulated time runs years ahead of the wall clock, so a real-time sweeper of another process
# sharing this Redis never finds these reservations past their (simulated) deadline.
YEAR = datetime.now(UTC).year + 5
SEMESTERS = (
    Semester(f"fall-{YEAR}", date(YEAR, 8, 24), date(YEAR, 12, 18)),
    Semester(f"spring-{YEAR + 1}", date(YEAR + 1, 1, 11), date(YEAR + 1, 5, 7)),
)
ZONES = ("UTC", "America/Chicago", "Europe/Berlin", "Asia/Tokyo")
USERS = ("ann", "bo", "cy")
PRICES = (0, 1, 333_333, 1_000_000, 2_500_000)
START = datetime(YEAR, 8, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------- random trees
def rule_st(metric: Metric, root: bool, tokens_capped: bool) -> st.SearchStrategy[Rule | None]:
    top = 400 if metric == "tokens" else 120
    if root:
        return st.builds(Rule.fixed, st.integers(20, top))
    options: list[st.SearchStrategy[Rule | None]] = [
        st.none(),
        st.builds(Rule.fixed, st.integers(0, top // 2)),
    ]
    if metric == "cost" or tokens_capped:
        options.append(st.builds(Rule.percent, st.integers(0, 20).map(lambda p: p * 5)))
    return st.one_of(*options)


def member_cap_st(metric: Metric) -> st.SearchStrategy[MemberCap | None]:
    return st.one_of(
        st.none(),
        st.builds(MemberCap.fixed, st.integers(0, 60 if metric == "tokens" else 30)),
        st.builds(MemberCap.fair_share, st.sampled_from(["0.5", "1", "1.5", "3"])),
    )


@st.composite
def extra_st(draw: st.DrawFn, xid: str) -> ExtraSpec:
    start = START.date() + timedelta(days=draw(st.integers(-30, 200)))
    amounts: dict[Metric, int] = {"cost": draw(st.integers(0, 40))}
    if draw(st.booleans()):
        amounts["tokens"] = draw(st.integers(0, 150))
    return ExtraSpec(xid, amounts, start, start + timedelta(days=draw(st.integers(0, 200))), f"CB-{xid}")


@st.composite
def spec_st(draw: st.DrawFn, inst: str) -> InstitutionSpec:
    n = draw(st.integers(2, 6))
    tokens_capped = draw(st.booleans())
    units = []
    extra_no = 0
    for i in range(n):
        root = i == 0
        rules: dict[Metric, Rule] = {}
        for m in METRICS:
            if m == "tokens" and root and not tokens_capped:
                continue
            r = draw(rule_st(m, root, tokens_capped))
            if r is not None:
                rules[m] = r
        mcap: dict[Metric, MemberCap] = {}
        for m in METRICS:
            c = draw(member_cap_st(m))
            if c is not None and draw(st.booleans()):
                mcap[m] = c
        extras = []
        for _ in range(draw(st.integers(0, 2))):
            extras.append(draw(extra_st(f"x{extra_no}")))
            extra_no += 1
        period = draw(st.sampled_from(["month", "week", "day", "semester", "year", "none"])) if root else None
        if not root and draw(st.integers(0, 3)) == 0:
            period = draw(st.sampled_from(["week", "day", "semester", "none"]))
        units.append(
            UnitSpec(
                id=f"u{i}",
                parent=None if root else f"u{draw(st.integers(0, i - 1))}",
                kind="unit",
                name=f"Unit {i}",
                period=period,
                rules=rules,
                member_cap=mcap,
                extras=tuple(extras),
                member_count=draw(st.integers(0, 4)),
            )
        )
    return InstitutionSpec(
        id=inst, units=tuple(units), timezone=draw(st.sampled_from(ZONES)), semesters=SEMESTERS
    )


# ---------------------------------------------------------------------------- the reference
@dataclass
class Hold:
    unit: str
    user: str
    path: list[tuple[str, str]]  # (node, period key)
    eligible: list[list[str]]
    plans: dict[Metric, Plan]
    price_in: int
    price_out: int
    deadline_ms: int


class Reference:
    """Spec sections 3-6 over plain dicts, using only quota.waterfall/caps/periods."""

    def __init__(self, spec: InstitutionSpec) -> None:
        self.units: dict[tuple[str, str, Metric], list[int]] = {}
        self.extras: dict[tuple[str, Metric], list[int]] = {}
        self.pending: dict[str, Hold] = {}
        self.expired: dict[str, tuple[Hold, int]] = {}
        self.billed: dict[str, Charge] = {}
        # settle replies kept for a repeat (a retry after a lost reply gets the first answer)
        self.done: dict[str, tuple[str, Charge | None, dict[Metric, int]]] = {}
        self.set_spec(spec)

    def set_spec(self, spec: InstitutionSpec) -> None:
        self.spec = spec
        self.by_id = spec.by_id()
        self.caps = resolve_caps(spec)
        self.mcaps = resolve_member_caps(spec, self.caps)
        self.cal = Calendar(spec.timezone, spec.semesters, spec.year_start_month)
        self.amounts = {(x.id, m): a for u in spec.units for x in u.extras for m, a in x.amounts.items()}

    def path(self, unit: str, user: str, at: datetime) -> tuple[list[str], list[Window], list[list[str]]]:
        units = self.spec.path_to_root(unit)
        nodes = [keys.member_node(user, unit), *units]
        wins = [window(self.spec.effective_period(u), at, self.cal) for u in [unit, *units]]
        eligible: list[list[str]] = [[]]
        for u in units:
            ordered = sorted(self.by_id[u].extras, key=lambda x: (x.valid_to, x.id))
            eligible.append(
                [
                    x.id
                    for x in ordered
                    if local_midnight(x.valid_from, self.cal)
                    <= at
                    < local_midnight(x.valid_to + timedelta(1), self.cal)
                ]
            )
        return nodes, wins, eligible

    def node_caps(self, unit: str, nodes: list[str], m: Metric) -> list[int | None]:
        return [self.mcaps[unit][m], *(self.caps[u][m] for u in nodes[1:])]

    def state(self, unit: str, path: list[tuple[str, str]], eligible: list[list[str]]) -> tuple[dict, dict]:  # type: ignore[type-arg]
        nodes = [n for n, _ in path]
        rooms = {m: rooms_on_path(self.units, path, self.node_caps(unit, nodes, m), m) for m in METRICS}
        xr = {m: extra_rooms(self.extras, eligible, self.amounts, m) for m in METRICS}
        return rooms, xr

    def reserve(self, rid: str, unit: str, user: str, req: dict[str, int], now_ms: int) -> Any:
        at = datetime.fromtimestamp(now_ms / 1000, UTC)
        nodes, wins, eligible = self.path(unit, user, at)
        path = list(zip(nodes, [w.key for w in wins], strict=True))
        rooms, xr = self.state(unit, path, eligible)
        d = decide(req["tin"], req["nout"], req["pin"], req["pout"], req["nmin"], rooms, xr)
        if isinstance(d, Deny):
            return d, nodes, wins
        for m in METRICS:
            apply_plan(self.units, self.extras, path, m, d.plans[m], slot=1)
        self.pending[rid] = Hold(
            unit, user, path, eligible, dict(d.plans), req["pin"], req["pout"], now_ms + int(TTL * 1000)
        )
        rooms, xr = self.state(unit, path, eligible)
        remaining: dict[Metric, tuple[str, int] | None] = {}
        for m in METRICS:
            at_i = limiting(rooms[m], xr[m])
            cap = capacity(rooms[m], xr[m])
            remaining[m] = None if at_i is None or cap is None else (nodes[at_i], cap)
        return d, nodes, wins, remaining

    def _undo(self, h: Hold) -> None:
        for m in METRICS:
            apply_plan(self.units, self.extras, h.path, m, h.plans[m], slot=1, sign=-1)

    def settle(self, rid: str, tin: int, tout: int) -> tuple[str, Charge | None, dict[Metric, int], bool]:
        """(status, charge, funded, whether it repeats an earlier settle's answer); for 'late', in place of
        funded, what the sweeper billed (the hold): usage above it is overage."""
        if rid in self.done:
            return (*self.done[rid], True)
        if rid in self.pending:
            h = self.pending.pop(rid)
            self._undo(h)
            status = "settled"
        elif rid in self.expired:
            h, _ = self.expired.pop(rid)
            billed = {m: h.plans[m].funded for m in METRICS}
            self.done[rid] = ("late", None, billed)  # expiry billed the hold: nothing more
            return "late", None, billed, False
        else:
            return "gone", None, {}, False
        actual: dict[Metric, int] = {
            "cost": cost_of(tin, tout, h.price_in, h.price_out),
            "tokens": tin + tout,
        }
        rooms, xr = self.state(h.unit, h.path, h.eligible)
        plans = {m: plan(actual[m], rooms[m], xr[m]) for m in METRICS}
        for m in METRICS:
            apply_plan(self.units, self.extras, h.path, m, plans[m], slot=0)
        charge = Charge(
            self.spec.id,
            tuple(n for n, _ in h.path),
            tuple(k for _, k in h.path),
            {m: plans[m].allocation for m in METRICS},
            {m: plans[m].extras for m in METRICS},
        )
        self.done[rid] = (status, charge, {m: plans[m].funded for m in METRICS})
        return (*self.done[rid], False)

    def release(self, rid: str) -> str:
        if rid in self.pending:
            self._undo(self.pending.pop(rid))
            return "released"
        if rid in self.expired:
            del self.expired[rid]
            return "expired"
        return "gone"

    def sweep(self, now_ms: int) -> int:
        """Holds past their deadline become spend as held (nobody can report the real usage), and
        their charges wait in `billed` for the ledger, as the engine's unsettled list does."""
        due = [rid for rid, h in self.pending.items() if h.deadline_ms <= now_ms]
        for rid in due:
            h = self.pending.pop(rid)
            self._undo(h)
            for m in METRICS:
                apply_plan(self.units, self.extras, h.path, m, h.plans[m], slot=0)
            self.billed[rid] = Charge(
                self.spec.id,
                tuple(n for n, _ in h.path),
                tuple(k for _, k in h.path),
                {m: h.plans[m].allocation for m in METRICS},
                {m: h.plans[m].extras for m in METRICS},
            )
            self.expired[rid] = (h, now_ms)
        for rid, (_, at) in list(self.expired.items()):
            if at <= now_ms - int(XP_RETENTION * 1000):
                del self.expired[rid]
        return len(due)

    def lose_redis(self) -> None:
        """Redis emptied: holds and reservation records are gone; spend comes back from the ledger."""
        for v in self.units.values():
            v[1] = 0
        for v in self.extras.values():
            v[1] = 0
        self.pending.clear()
        self.expired.clear()
        self.done.clear()


# ---------------------------------------------------------------------------- the machine
class QuotaMachine(RuleBasedStateMachine):
    redis_url = "redis://127.0.0.1:6379/0"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.inst = new_inst()
        self.ready = False
        self.clock = START
        self.charges: list[Charge] = []
        self.rids: list[str] = []
        self.reservations: dict[str, Reservation] = {}
        self.loads = 0
        self.prev_units: dict[tuple[str, str, Metric], int] = {}
        self.prev_extras: dict[tuple[str, Metric], int] = {}
        self.sync = redis.Redis.from_url(self.redis_url, decode_responses=True)

        async def loader(inst: str) -> tuple[InstitutionSpec, Iterable[Charge]]:
            self.loads += 1
            return self.ref.spec, list(self.charges)

        # deadlines follow Redis's clock in production; here they follow the simulated one
        self.a = QuotaEngine.from_url(
            self.redis_url,
            reservation_ttl=TTL,
            expired_retention=XP_RETENTION,
            loader=loader,
            lease_clock=self.now,
        )
        self.b = QuotaEngine.from_url(self.redis_url)  # the replica that applies budget edits

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def now(self) -> float:
        return self.clock.timestamp()

    def teardown(self) -> None:
        try:
            self.run(self.a.close())
            self.run(self.b.close())
        finally:
            self.loop.close()
            self.sync.close()
            wipe(self.redis_url, self.inst)

    @initialize(data=st.data(), offset=st.integers(0, 300 * 24))
    def build(self, data: st.DataObject, offset: int) -> None:
        spec = data.draw(spec_st(self.inst))
        self.clock = START + timedelta(hours=offset)
        self.ref = Reference(spec)
        self.run(self.b.compile(spec))
        self.ready = True

    # -- requests ------------------------------------------------------------------------
    def _draw_request(self, data: st.DataObject) -> tuple[str, str, dict[str, int]]:
        unit = data.draw(st.sampled_from([u.id for u in self.ref.spec.units]))
        user = data.draw(st.sampled_from(USERS))
        req = {
            "tin": data.draw(st.integers(0, 15)),
            "nout": data.draw(st.integers(0, 25)),
            "pin": data.draw(st.sampled_from(PRICES)),
            "pout": data.draw(st.sampled_from(PRICES)),
            "nmin": data.draw(st.integers(0, 8)),
        }
        return unit, user, req

    async def _engine_reserve(self, unit: str, user: str, req: dict[str, int]) -> Reservation | Refusal:
        return await self.a.reserve(
            self.inst, unit, user, input_tokens=req["tin"], max_output_tokens=req["nout"], price_in=req["pin"],
            price_out=req["pout"], min_output_tokens=req["nmin"], now=self.now(),
        )  # fmt: skip

    def _check_reserve(self, unit: str, user: str, req: dict[str, int], got: Reservation | Refusal) -> None:
        rid = got.id if isinstance(got, Reservation) else "-"
        expected = self.ref.reserve(rid, unit, user, req, int(self.now() * 1000))
        d, nodes, wins = expected[0], expected[1], expected[2]
        if isinstance(d, Deny):
            assert isinstance(got, Refusal), (got, d)
            idx = d.index
            assert (got.binding_node, got.metric, got.needed, got.available) == (
                nodes[idx], d.metric, d.needed, d.available,
            )  # fmt: skip
            assert got.resets_at == wins[idx].end
            assert got.is_member_cap == (idx == 0)
            return
        assert isinstance(d, Grant) and isinstance(got, Reservation), (got, d)
        assert (got.output_tokens, got.clamped) == (d.output_tokens, d.clamped)
        assert (got.reserved_cost, got.reserved_tokens) == (d.amounts["cost"], d.amounts["tokens"])
        assert list(got.path) == nodes and list(got.period_keys) == [w.key for w in wins]
        remaining = expected[3]
        for m in METRICS:
            r = got.remaining[m]
            assert (None if r is None else (r.node, r.room)) == remaining[m]
        self.rids.append(rid)
        self.reservations[rid] = got

    def _reserve(self, data: st.DataObject) -> None:
        unit, user, req = self._draw_request(data)
        self._check_reserve(unit, user, req, self.run(self._engine_reserve(unit, user, req)))

    def _draw_usage(self, data: st.DataObject, rid: str) -> tuple[int, int]:
        r = self.reservations[rid]
        tin = data.draw(st.integers(0, 18))
        tout = data.draw(st.one_of(st.integers(0, r.output_tokens), st.integers(0, r.output_tokens + 10)))
        return tin, tout

    def _check_settle(self, rid: str, tin: int, tout: int, s: Any) -> None:
        r = self.reservations[rid]
        status, charge, funded, repeat = self.ref.settle(rid, tin, tout)
        assert s.status == status, (s, status)
        assert s.charge == charge
        if status == "late":  # the hold was billed; what was served above it is overage, charged nowhere
            actual = {"cost": cost_of(tin, tout, r.price_in, r.price_out), "tokens": tin + tout}
            assert dict(s.charged) == {"cost": 0, "tokens": 0}
            assert dict(s.overage) == {m: max(0, actual[m] - funded[m]) for m in METRICS}
        if charge is not None:
            if not repeat:
                self.charges.append(charge)
            assert dict(s.charged) == funded
            actual = {"cost": cost_of(tin, tout, r.price_in, r.price_out), "tokens": tin + tout}
            assert dict(s.overage) == {m: actual[m] - funded[m] for m in METRICS}

    @precondition(lambda self: self.ready)
    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        self._reserve(data)

    @precondition(lambda self: self.ready and self.rids)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.rids))
        tin, tout = self._draw_usage(data, rid)
        self._check_settle(rid, tin, tout, self.run(self.a.settle(self.reservations[rid], tin, tout)))

    @precondition(lambda self: self.ready)
    @rule(data=st.data())
    def burst(self, data: st.DataObject) -> None:
        """Several requests at once: one batch (one script call) that applies them in order.

        The snapshot is refreshed first: a reserve that finds it stale retries in a later
        batch, after the rest of the burst, which would reorder the burst (the single-step
        rules exercise that path).
        """
        self.a.invalidate(self.inst)
        self.run(self.a.snapshot(self.inst))
        plan: list[tuple[str, Any]] = []
        used: set[str] = set()
        for _ in range(data.draw(st.integers(2, 8))):
            free = [rid for rid in self.rids if rid not in used]
            kind = data.draw(st.sampled_from(["reserve", "settle", "release"] if free else ["reserve"]))
            if kind == "reserve":
                plan.append((kind, self._draw_request(data)))
            else:
                rid = data.draw(st.sampled_from(free))
                used.add(rid)
                plan.append((kind, (rid, self._draw_usage(data, rid))))

        async def go() -> list[Any]:
            calls = []
            for kind, args in plan:
                if kind == "reserve":
                    calls.append(self._engine_reserve(*args))
                elif kind == "settle":
                    calls.append(self.a.settle(self.reservations[args[0]], *args[1]))
                else:
                    calls.append(self.a.release(self.reservations[args[0]]))
            return list(await asyncio.gather(*calls))

        for (kind, args), got in zip(plan, self.run(go()), strict=True):
            if kind == "reserve":
                self._check_reserve(*args, got)
            elif kind == "settle":
                self._check_settle(args[0], *args[1], got)
            else:
                assert got == self.ref.release(args[0])

    @precondition(lambda self: self.ready and self.rids)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.rids))
        assert self.run(self.a.release(self.reservations[rid])) == self.ref.release(rid)

    # -- time ----------------------------------------------------------------------------
    @precondition(lambda self: self.ready)
    @rule(minutes=st.one_of(st.integers(1, 120), st.integers(60, 20 * 24 * 60)))
    def advance(self, minutes: int) -> None:
        self.clock += timedelta(minutes=minutes)

    @precondition(lambda self: self.ready)
    @rule()
    def sweep(self) -> None:
        now = self.now()
        assert self.run(self.a.sweep(self.inst)) == self.ref.sweep(int(now * 1000))
        drained: list[Any] = []
        self.run(self.a.drain_unsettled(self.inst, drained.append))
        assert {h.reservation_id: h.charge for h in drained} == self.ref.billed
        self.charges.extend(self.ref.billed.values())
        self.ref.billed.clear()

    # -- budget edits, compiled by another replica ---------------------------------------
    @precondition(lambda self: self.ready)
    @rule(data=st.data())
    def edit(self, data: st.DataObject) -> None:
        spec = self.ref.spec
        unit = data.draw(st.sampled_from(spec.units))
        root = unit.parent is None
        tokens_capped = "tokens" in spec.root().rules
        kind = data.draw(st.sampled_from(["rule", "member_cap", "extra", "period", "members"]))
        if kind == "rule":
            m = data.draw(st.sampled_from(METRICS if tokens_capped or not root else ("cost",)))
            r = data.draw(rule_st(m, root, tokens_capped))
            rules = {k: v for k, v in unit.rules.items() if k != m}
            if r is not None:
                rules[m] = r
            new = replace(unit, rules=rules)
        elif kind == "member_cap":
            m = data.draw(st.sampled_from(METRICS))
            c = data.draw(member_cap_st(m))
            caps = {k: v for k, v in unit.member_cap.items() if k != m}
            if c is not None:
                caps[m] = c
            new = replace(unit, member_cap=caps)
        elif kind == "extra":
            extras = list(unit.extras)
            if extras and data.draw(st.booleans()):
                i = data.draw(st.integers(0, len(extras) - 1))
                if data.draw(st.booleans()):
                    del extras[i]
                else:
                    extras[i] = data.draw(extra_st(extras[i].id))
            else:
                taken = {x.id for u in spec.units for x in u.extras}
                extras.append(data.draw(extra_st(next(f"x{n}" for n in range(99) if f"x{n}" not in taken))))
            new = replace(unit, extras=tuple(extras))
        elif kind == "period":
            choices = ["month", "week", "day", "semester", "year", "none"] + ([] if root else [None])
            new = replace(unit, period=data.draw(st.sampled_from(choices)))
        else:
            new = replace(unit, member_count=data.draw(st.integers(0, 6)))
        spec = replace(spec, units=tuple(new if u.id == unit.id else u for u in spec.units))
        self.ref.set_spec(spec)
        changed = None if data.draw(st.integers(0, 3)) == 0 else [unit.id]
        self.run(self.b.compile(spec, changed=changed))

    # -- Redis loses everything ----------------------------------------------------------
    @precondition(lambda self: self.ready)
    @rule(data=st.data())
    def lose_redis(self, data: st.DataObject) -> None:
        wipe(self.redis_url, self.inst)
        self.ref.lose_redis()
        assert not self.run(self.a.is_compiled(self.inst))
        loads = self.loads
        self._reserve(data)  # finds no compile token: rebuilds from the ledger, then serves
        assert self.loads == loads + 1 and self.run(self.a.is_compiled(self.inst))

    # -- after every step ----------------------------------------------------------------
    @invariant()
    def redis_matches_the_reference(self) -> None:
        if not self.ready:
            return
        up, res, used = self.run(self.a.redis_counters(self.inst))
        xres = {}
        for e, v in self.sync.hgetall(keys.extras(self.inst)).items():
            _, cr, _, tr = keys.unpack_counters(v)
            xres[(e, "cost")], xres[(e, "tokens")] = cr, tr
        ref_units, ref_extras = self.ref.units, self.ref.extras
        for k in set(up) | set(res) | set(ref_units):
            assert (up.get(k, 0), res.get(k, 0)) == tuple(ref_units.get(k, (0, 0))), k
        for k in set(used) | set(xres) | set(ref_extras):
            assert (used.get(k, 0), xres.get(k, 0)) == tuple(ref_extras.get(k, (0, 0))), k

    @invariant()
    def caps_hold(self) -> None:
        if not self.ready:
            return
        caps, mcaps = self.ref.caps, self.ref.mcaps
        totals = {k: v[0] + v[1] for k, v in self.ref.units.items()}
        for (pkey, node, m), total in totals.items():
            if node.startswith("member("):
                cap = mcaps[node[len("member(") : -1].split(",")[-1]][m]
            else:
                cap = caps[node][m]
            if cap is not None and total > cap:  # only possible below a cap lowered by an edit
                assert total <= self.prev_units.get((pkey, node, m), 0), (pkey, node, m, total, cap)
        xtotals = {k: v[0] + v[1] for k, v in self.ref.extras.items()}
        for k, total in xtotals.items():
            amount = self.ref.amounts.get(k)
            if amount is not None and total > amount:
                assert total <= self.prev_extras.get(k, 0), (k, total, amount)
        self.prev_units, self.prev_extras = totals, xtotals

    @invariant()
    def counters_are_the_sum_of_the_charges(self) -> None:
        if not self.ready:
            return
        values = recompute_counters(self.charges)
        units, extras = values.of(self.inst)
        assert {k: v for k, v in units.items() if v} == {k: v[0] for k, v in self.ref.units.items() if v[0]}
        assert {k: v for k, v in extras.items() if v} == {k: v[0] for k, v in self.ref.extras.items() if v[0]}
        assert self.run(self.a.drift(self.inst, values)) == []


def test_redis_agrees_with_the_reference_model(redis_url: str) -> None:
    QuotaMachine.redis_url = redis_url
    run_state_machine_as_test(
        QuotaMachine,
        settings=settings(
            max_examples=int(__import__("os").environ.get("QUOTA_MODEL_EXAMPLES", "75")),
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        ),
    )


@pytest.mark.parametrize("seed", [0])
def test_reference_handles_the_worked_example(seed: int) -> None:
    """The reference itself reproduces section 7 (so agreeing with it means something)."""
    from quota.model import spec_from_org
    from tests.quota.conftest import stateu_doc

    ref = Reference(spec_from_org(stateu_doc("stateu")))
    now = int(datetime(2026, 11, 10, tzinfo=UTC).timestamp() * 1000)

    def spend(unit: str, user: str, amount: int, rid: str) -> Any:
        req = {"tin": amount, "nout": 0, "pin": 1_000_000, "pout": 0, "nmin": 0}
        out = ref.reserve(rid, unit, user, req, now)
        if isinstance(out[0], Deny):
            return out[0], out[1]
        return ref.settle(rid, amount, 0)

    assert spend("cs101", "s1", 15, "r1")[0] == "settled"
    deny, nodes = spend("cs101", "s1", 10, "r2")
    assert nodes[deny.index] == "member(s1,cs101)" and deny.available == 5
    assert spend("cs102", "s2", 285, "r3")[0] == "settled"
    deny, nodes = spend("cs101", "s3", 1, "r4")
    assert nodes[deny.index] == "ada-teaching"
    assert spend("ada-research", "r1", 500, "r5")[0] == "settled"
    _status, charge, _, _ = spend("ada-research", "r1", 100, "r6")
    assert charge.extras["cost"] == (("nsf-123", 1, 100),)
    deny, nodes = spend("ada-research", "r1", 200, "r7")
    assert nodes[deny.index] == "ada-research" and (deny.needed, deny.available) == (200, 150)
