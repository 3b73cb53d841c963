"""The reference model of spec sections 5 and 6: pure functions over plain numbers and dicts.

This is the executable statement of the rules. ``lua/common.lua`` implements
the same functions for Redis line by line (same names), and the model-based
test drives both and demands identical counters, so a change here without the
same change there fails loudly.

Definitions (per metric; ``None`` means "no limit"):

* ``room[i] = max(0, cap[i] - up[i] - res[i])`` for each node ``n0`` (member)
  .. ``nk`` (root); a node without a cap has unlimited room. Rooms of a
  reservation-time check count reservations in flight (``res``); a cap lowered
  below what is already spent gives room 0, never a negative number.
* :func:`plan` is the waterfall: allocation first (``a = min(c, rooms)`` on
  every node), then extras nearest unit first and, at one unit, in the order
  given (soonest ``valid_to`` first, then id); an extra at ``j`` is limited by
  its own room and by the rooms of ``n0 .. n(j-1)`` only. It funds as much as
  it can; the callers decide whether a partial plan is a refusal (reserve) or
  an overage (settle).
* :func:`capacity` is what the waterfall could fund at most. A plan for any
  ``c`` funds exactly ``min(c, capacity)``.
* The **binding** node of a refused amount ``c`` is the lowest ``i`` whose
  prefix ``n0..ni`` (with the extras held at those nodes) cannot fund ``c``.
  On the worked example this names member(s1,cs101) in row 2, ada-teaching in
  row 4 and ada-research in row 8.
* The **limiting** node of a successful reservation is the lowest ``i`` whose
  prefix capacity is already no larger than the whole path's: the unit that
  an ``x-ratelimit-remaining``-style header should name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from quota.model import METRICS, Metric

Room = int | None  # None: unlimited
ExtrasAt = Sequence[Sequence[tuple[str, int]]]  # per node j: [(extra_id, room), ...] in spend order
MICRO = 1_000_000
# Lua numbers are doubles: every integer the scripts compute must stay below 2**53.
MAX_EXACT = 2**53 - 2 * MICRO


def room(cap: int | None, up: int, res: int) -> Room:
    return None if cap is None else max(0, cap - up - res)


def _min(a: Room, b: Room) -> Room:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


@dataclass(frozen=True)
class Plan:
    """Where one metric's amount is taken from: ``allocation`` on every node, plus extras."""

    allocation: int
    extras: tuple[tuple[str, int, int], ...]  # (extra_id, node index j, amount)
    funded: int


EMPTY_PLAN = Plan(0, (), 0)


def plan(amount: int | None, rooms: Sequence[Room], extras: ExtrasAt) -> Plan:
    """The waterfall of section 5 for ``amount`` (``None``: as much as possible)."""
    a: Room = amount
    for r in rooms:
        a = _min(a, r)
    if a is None:  # unlimited amount on an unlimited path: only capacity() asks this
        raise ValueError("unbounded plan")
    remaining: Room = None if amount is None else amount - a
    taken: list[tuple[str, int, int]] = []
    prefix: Room = None  # min room of n0 .. n(j-1) after what was already taken
    for j, r in enumerate(rooms):
        if remaining == 0:
            break
        for extra_id, extra_room in extras[j] if j < len(extras) else ():
            if remaining == 0 or prefix == 0:
                break
            x = _min(_min(remaining, extra_room), prefix)
            assert x is not None
            if x > 0:
                taken.append((extra_id, j, x))
                if remaining is not None:
                    remaining -= x
                if prefix is not None:
                    prefix -= x
        prefix = _min(prefix, None if r is None else r - a)
    funded = a + sum(x for _, _, x in taken)
    return Plan(a, tuple(taken), funded)


def capacity(rooms: Sequence[Room], extras: ExtrasAt) -> Room:
    """The most the waterfall could fund on this path; ``None`` if nothing on it caps the metric."""
    if all(r is None for r in rooms):
        return None
    return plan(None, rooms, extras).funded


def binding(amount: int, rooms: Sequence[Room], extras: ExtrasAt) -> int:
    """Index of the binding node for a refused ``amount`` (see module docstring)."""
    for i in range(len(rooms)):
        if plan(amount, rooms[: i + 1], extras[: i + 1]).funded < amount:
            return i
    raise ValueError("amount is fundable: nothing binds")


def limiting(rooms: Sequence[Room], extras: ExtrasAt) -> int | None:
    """Index of the node that limits what is left, ``None`` when the path has no cap."""
    total = capacity(rooms, extras)
    if total is None:
        return None
    for i in range(len(rooms)):
        c = capacity(rooms[: i + 1], extras[: i + 1])
        if c is not None and c <= total:
            return i
    return len(rooms) - 1


def cost_of(input_tokens: int, output_tokens: int, price_in: int, price_out: int) -> int:
    """Cost in micro-units, rounded up (prices are micro-units per 1M tokens)."""
    return -(-(input_tokens * price_in + output_tokens * price_out) // MICRO)


@dataclass(frozen=True)
class Grant:
    output_tokens: int
    clamped: bool
    amounts: Mapping[Metric, int]
    plans: Mapping[Metric, Plan]


@dataclass(frozen=True)
class Deny:
    metric: Metric
    index: int  # binding node
    needed: int
    available: int


def decide(
    input_tokens: int,
    max_output: int,
    price_in: int,
    price_out: int,
    min_output: int,
    rooms: Mapping[Metric, Sequence[Room]],
    extras: Mapping[Metric, ExtrasAt],
) -> Grant | Deny:
    """Reserve decision of section 6: the whole bound, else the clamp, else a refusal."""
    cap_c = capacity(rooms["cost"], extras["cost"])
    cap_t = capacity(rooms["tokens"], extras["tokens"])

    def fits(n: int) -> bool:
        return (cap_c is None or cost_of(input_tokens, n, price_in, price_out) <= cap_c) and (
            cap_t is None or input_tokens + n <= cap_t
        )

    n, clamped = max_output, False
    if not fits(n):
        clamped = True
        if cap_t is not None:
            n = min(n, cap_t - input_tokens)
        if cap_c is not None:
            if price_out == 0:
                n = n if cost_of(input_tokens, 0, price_in, 0) <= cap_c else -1
            else:
                n = min(n, (cap_c * MICRO - input_tokens * price_in) // price_out)
        if n < min_output or n < 0:
            need_n = min(min_output, max_output)
            need_c = cost_of(input_tokens, need_n, price_in, price_out)
            if cap_c is not None and need_c > cap_c:
                return Deny("cost", binding(need_c, rooms["cost"], extras["cost"]), need_c, cap_c)
            need_t = input_tokens + need_n
            assert cap_t is not None
            return Deny("tokens", binding(need_t, rooms["tokens"], extras["tokens"]), need_t, cap_t)
    amounts: dict[Metric, int] = {
        "cost": cost_of(input_tokens, n, price_in, price_out),
        "tokens": input_tokens + n,
    }
    plans = {m: plan(amounts[m], rooms[m], extras[m]) for m in METRICS}
    return Grant(n, clamped, amounts, plans)


# --- counters over plain dicts -------------------------------------------------------------
# units[(period_key, node, metric)] = [up, res]; extras[(extra_id, metric)] = [used, res]
UnitCounters = MutableMapping[tuple[str, str, Metric], list[int]]
ExtraCounters = MutableMapping[tuple[str, Metric], list[int]]


def apply_plan(
    units: UnitCounters,
    extras: ExtraCounters,
    path: Sequence[tuple[str, str]],
    metric: Metric,
    p: Plan,
    slot: int,
    sign: int = 1,
) -> None:
    """Add (``sign=1``) or undo (``-1``) a plan: ``slot`` 0 is spend (up/used), 1 is a hold (res).

    Allocation lands on every node of ``path`` ((node, period_key) member
    first); an extra at ``j`` lands on ``n0 .. n(j-1)`` and on the extra.
    """
    for i, (node, pkey) in enumerate(path):
        units.setdefault((pkey, node, metric), [0, 0])[slot] += sign * p.allocation
        for _, j, x in p.extras:
            if i < j:
                units[(pkey, node, metric)][slot] += sign * x
    for extra_id, _, x in p.extras:
        extras.setdefault((extra_id, metric), [0, 0])[slot] += sign * x


def rooms_on_path(
    units: Mapping[tuple[str, str, Metric], Sequence[int]],
    path: Sequence[tuple[str, str]],
    caps: Sequence[int | None],
    metric: Metric,
) -> list[Room]:
    out: list[Room] = []
    for (node, pkey), cap in zip(path, caps, strict=True):
        up, res = units.get((pkey, node, metric), (0, 0))
        out.append(room(cap, up, res))
    return out


def extra_rooms(
    extras: Mapping[tuple[str, Metric], Sequence[int]],
    eligible: Sequence[Sequence[str]],
    amounts: Mapping[tuple[str, Metric], int],
    metric: Metric,
) -> list[list[tuple[str, int]]]:
    """Per node, the eligible extras with their room for ``metric`` (extras without an amount pay nothing)."""
    out: list[list[tuple[str, int]]] = []
    for ids in eligible:
        row = []
        for extra_id in ids:
            amount = amounts.get((extra_id, metric))
            if amount is None:
                continue
            used, res = extras.get((extra_id, metric), (0, 0))
            row.append((extra_id, max(0, amount - used - res)))
        out.append(row)
    return out


def total_spend(plans: Iterable[Plan]) -> int:
    return sum(p.funded for p in plans)
