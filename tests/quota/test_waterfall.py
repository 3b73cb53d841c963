"""The reference model (quota/waterfall.py) against the rules of sections 5 and 6, by property."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quota.waterfall import Deny, Grant, Room, binding, capacity, cost_of, decide, limiting, plan

rooms_st = st.lists(st.one_of(st.none(), st.integers(0, 50)), min_size=1, max_size=6)


@st.composite
def paths(draw: st.DrawFn) -> tuple[list[Room], list[list[tuple[str, int]]]]:
    rooms = draw(rooms_st)
    if all(r is None for r in rooms):
        rooms[-1] = draw(st.integers(0, 50))  # the root is always capped
    extras: list[list[tuple[str, int]]] = [[]]  # the member node holds no extras
    n = 0
    for _ in rooms[1:]:
        row = []
        for _ in range(draw(st.integers(0, 2))):
            row.append((f"x{n}", draw(st.integers(0, 30))))
            n += 1
        extras.append(row)
    return rooms, extras


def _check_limits(rooms: list[Room], extras: list[list[tuple[str, int]]], p: object) -> None:
    from quota.waterfall import Plan

    assert isinstance(p, Plan)
    for i, r in enumerate(rooms):
        through = p.allocation + sum(x for _, j, x in p.extras if j > i)
        assert r is None or through <= r
    rooms_of_extra = {e: room for row in extras for e, room in row}
    for e, j, x in p.extras:
        assert x > 0 and x <= rooms_of_extra[e] and e in dict(extras[j])


@given(paths(), st.integers(0, 200))
def test_plan_funds_min_of_amount_and_capacity_within_every_room(path: tuple, amount: int) -> None:  # type: ignore[type-arg]
    rooms, extras = path
    p = plan(amount, rooms, extras)
    cap = capacity(rooms, extras)
    assert cap is not None
    assert p.funded == min(amount, cap) == p.allocation + sum(x for _, _, x in p.extras)
    _check_limits(rooms, extras, p)
    # allocation first: extras only pay what allocation could not
    finite = [r for r in rooms if r is not None]
    assert p.allocation == min([amount, *finite])


@given(paths(), st.integers(1, 200))
def test_binding_is_the_lowest_prefix_that_cannot_fund(path: tuple, amount: int) -> None:  # type: ignore[type-arg]
    rooms, extras = path
    if plan(amount, rooms, extras).funded == amount:
        return
    b = binding(amount, rooms, extras)
    assert plan(amount, rooms[: b + 1], extras[: b + 1]).funded < amount
    for i in range(b):
        assert plan(amount, rooms[: i + 1], extras[: i + 1]).funded == amount


@given(paths())
def test_prefix_capacity_never_grows_and_limiting_names_where_it_stops(path: tuple) -> None:  # type: ignore[type-arg]
    rooms, extras = path
    caps = [capacity(rooms[: i + 1], extras[: i + 1]) for i in range(len(rooms))]
    finite = [c for c in caps if c is not None]
    assert finite == sorted(finite, reverse=True)
    at = limiting(rooms, extras)
    assert at is not None and caps[at] == capacity(rooms, extras)
    assert all(c is None or c > caps[at] for c in caps[:at])  # type: ignore[operator]


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**8), st.integers(0, 10**8))
def test_cost_rounds_up_to_a_whole_micro_unit(tin: int, tout: int, pin: int, pout: int) -> None:
    c = cost_of(tin, tout, pin, pout)
    exact = tin * pin + tout * pout
    assert c * 1_000_000 >= exact > (c - 1) * 1_000_000


@given(
    paths(), paths(),
    st.integers(0, 40), st.integers(0, 60), st.sampled_from([0, 1, 333_333, 1_000_000, 2_500_000]),
    st.sampled_from([0, 1, 600_000, 1_000_000, 3_000_000]), st.integers(0, 20),
)  # fmt: skip
def test_reserve_grants_the_whole_bound_or_the_largest_clamp_or_refuses(
    cost_path: tuple,  # type: ignore[type-arg]
    token_path: tuple,  # type: ignore[type-arg]
    tin: int,
    nout: int,
    pin: int,
    pout: int,
    nmin: int,
) -> None:
    k = min(len(cost_path[0]), len(token_path[0]))
    rooms = {"cost": cost_path[0][:k], "tokens": token_path[0][:k]}
    extras = {"cost": cost_path[1][:k], "tokens": token_path[1][:k]}
    caps = {m: capacity(rooms[m], extras[m]) for m in rooms}

    def fits(n: int) -> bool:
        c, t = cost_of(tin, n, pin, pout), tin + n
        return (caps["cost"] is None or c <= caps["cost"]) and (caps["tokens"] is None or t <= caps["tokens"])

    d = decide(tin, nout, pin, pout, nmin, rooms, extras)
    if isinstance(d, Grant):
        assert fits(d.output_tokens)
        assert d.amounts == {
            "cost": cost_of(tin, d.output_tokens, pin, pout),
            "tokens": tin + d.output_tokens,
        }
        assert all(d.plans[m].funded == d.amounts[m] for m in rooms)
        if d.clamped:
            assert nmin <= d.output_tokens < nout and not fits(d.output_tokens + 1) and not fits(nout)
        else:
            assert d.output_tokens == nout
    else:
        assert isinstance(d, Deny)
        assert not any(fits(n) for n in range(min(nmin, nout), nout + 1))
        assert d.available == caps[d.metric] and d.needed > d.available
        assert (
            plan(d.needed, rooms[d.metric][: d.index + 1], extras[d.metric][: d.index + 1]).funded < d.needed
        )
