"""Chargeback lines: who used which model, and which cost object pays for it.

For each (unit, model, provider, purpose) of a month, the cost splits by funding:
what extras paid goes to each extra's chargeback code (a grant, a cost centre),
unfunded overage is shown on its own, and the rest, paid from allocation, goes to
the unit itself. Requests and tokens are apportioned to those lines in proportion
to the money each paid (largest remainder), so every column sums exactly to the
ledger's totals and no line counts a token twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

Funding = Literal["allocation", "extra", "overage"]
_FUNDING_ORDER = {"allocation": 0, "extra": 1, "overage": 2}
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class Line:
    unit_id: str
    unit_name: str
    purpose: str
    model_id: str | None
    provider_id: str | None
    funding: Funding
    extra_id: str
    cost_object: str
    requests: int
    input_tokens: int
    output_tokens: int
    image_tokens: int
    cached_tokens: int
    cost_micro: int


@dataclass
class Group:
    """One (unit, model, provider, purpose) of the month with its sums and what extras paid of it."""

    unit_id: str
    model_id: str | None
    provider_id: str | None
    purpose: str
    requests: int
    input_tokens: int
    output_tokens: int
    image_tokens: int
    cached_tokens: int
    cost_micro: int
    overage_micro: int
    extras: list[tuple[str, str | None, int]] = field(default_factory=list)  # (extra id, chargeback, amount)


def money(micro: int) -> str:
    """Micro-units as a decimal string in currency units with 6 places, never through a float."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split an integer in proportion to non-negative weights; exact sum, largest remainders first.

    With all weights zero everything goes to the first share (the allocation line).
    """
    if not weights:
        return []
    wsum = sum(weights)
    if wsum == 0:
        return [total] + [0] * (len(weights) - 1)
    shares = [total * w // wsum for w in weights]
    rest = total - sum(shares)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % wsum), i))
    for i in by_remainder[:rest]:
        shares[i] += 1
    return shares


def lines_of(group: Group, unit_name: str) -> list[Line]:
    extras_total = sum(amount for _, _, amount in group.extras)
    allocation = group.cost_micro - group.overage_micro - extras_total
    owner = group.unit_id or UNASSIGNED
    parts: list[tuple[Funding, str, str, int]] = [("allocation", "", owner, allocation)]
    for extra_id, chargeback, amount in sorted(group.extras, key=lambda x: (x[0], x[1] or "")):
        parts.append(("extra", extra_id, chargeback or extra_id, amount))
    parts.append(("overage", "", owner, group.overage_micro))
    weights = [max(p[3], 0) for p in parts]
    requests = apportion(group.requests, weights)
    inp = apportion(group.input_tokens, weights)
    out = apportion(group.output_tokens, weights)
    img = apportion(group.image_tokens, weights)
    cached = apportion(group.cached_tokens, weights)
    lines = []
    for i, (funding, extra_id, cost_object, amount) in enumerate(parts):
        if amount == 0 and inp[i] == 0 and out[i] == 0:
            continue  # refused and bad requests: nothing to charge, nothing consumed
        lines.append(
            Line(
                unit_id=group.unit_id,
                unit_name=unit_name,
                purpose=group.purpose,
                model_id=group.model_id,
                provider_id=group.provider_id,
                funding=funding,
                extra_id=extra_id,
                cost_object=cost_object,
                requests=requests[i],
                input_tokens=inp[i],
                output_tokens=out[i],
                image_tokens=img[i],
                cached_tokens=cached[i],
                cost_micro=amount,
            )
        )
    return lines


def sort_key(line: Line) -> tuple[str, str, str, str, int, str, str]:
    return (
        line.unit_id,
        line.model_id or "",
        line.provider_id or "",
        line.purpose,
        _FUNDING_ORDER[line.funding],
        line.extra_id,
        line.cost_object,
    )


_SCOPE = "e.institution_id = :inst and e.ended_at >= :start and e.ended_at < :end"
_IN_SUBTREE = " and jsonb_exists(e.path::jsonb, :unit)"

_GROUPS_SQL = """
select coalesce(e.unit_id, ''), e.model_id, e.provider_id, e.purpose, count(*), sum(e.input_tokens),
       sum(e.output_tokens), sum(e.image_tokens), sum(e.cached_tokens), sum(e.cost_micro), sum(e.overage_micro)
from usage_event e where {where} group by 1, 2, 3, 4
"""

_EXTRAS_SQL = """
select coalesce(e.unit_id, ''), e.model_id, e.provider_id, e.purpose, x->>'extra_id', x->>'chargeback',
       sum((x->>'amount')::bigint)
from usage_event e cross join lateral jsonb_array_elements(e.extras_paid::jsonb) x
where {where} and coalesce(x->>'metric', 'cost') = 'cost'
group by 1, 2, 3, 4, 5, 6
"""


async def load_lines(
    session: AsyncSession, institution_id: str, start: datetime, end: datetime, unit_id: str | None = None
) -> list[Line]:
    """The month's chargeback lines, for the whole institution or the subtree of `unit_id`."""
    where = _SCOPE + (_IN_SUBTREE if unit_id else "")
    params: dict[str, object] = {"inst": institution_id, "start": start, "end": end}
    if unit_id:
        params["unit"] = unit_id
    groups: dict[tuple[str, str | None, str | None, str], Group] = {}
    for r in await session.execute(text(_GROUPS_SQL.format(where=where)), params):
        key = (r[0], r[1], r[2], r[3])
        n = [int(v or 0) for v in r[4:]]
        groups[key] = Group(*key, n[0], n[1], n[2], n[3], n[4], n[5], n[6])
    for r in await session.execute(text(_EXTRAS_SQL.format(where=where)), params):
        groups[(r[0], r[1], r[2], r[3])].extras.append((r[4], r[5], int(r[6] or 0)))
    names = {
        r[0]: r[1]
        for r in await session.execute(
            text("select id, coalesce(name, id) from unit where institution_id = :inst"),
            {"inst": institution_id},
        )
    }
    lines = [line for g in groups.values() for line in lines_of(g, names.get(g.unit_id, g.unit_id))]
    return sorted(lines, key=sort_key)
