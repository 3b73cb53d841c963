"""Explain a user's budget in a unit: every node of the path with its numbers.

The data behind a 429 message ("ada-teaching has 0 left until 1 Dec") and
the dashboard. Pure: the engine reads the raw Redis values in one MULTI and
hands them here with the snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from quota import keys
from quota.model import METRICS, Metric, Period
from quota.snapshot import PreparedPath, Snapshot
from quota.waterfall import Room, capacity, room


@dataclass(frozen=True)
class ExtraReport:
    id: str
    amount: int
    used: int
    reserved: int
    valid_from: date
    valid_to: date  # inclusive
    chargeback: str | None
    valid_now: bool  # only extras valid now can pay


@dataclass(frozen=True)
class MetricReport:
    cap: int | None  # None: inherit (no cap of its own)
    used: int  # settled spend passed up from this node (allocation)
    reserved: int  # held by reservations in flight
    room: int | None  # cap - used - reserved, floored at 0; None: unlimited
    extras: tuple[ExtraReport, ...]


@dataclass(frozen=True)
class NodeReport:
    node: str  # unit id or member(user,unit)
    unit: str
    name: str
    kind: str  # the unit's kind, or "member"
    period: Period
    period_key: str
    resets_at: datetime | None
    metrics: Mapping[Metric, MetricReport]


@dataclass(frozen=True)
class Explanation:
    institution: str
    unit: str
    user: str
    at: datetime
    nodes: tuple[NodeReport, ...]  # member node first, root last
    available: Mapping[Metric, int | None]  # what one request could be funded now (None: unlimited)


def cap_fields(snap: Snapshot, prep: PreparedPath) -> list[str]:
    """cfg fields (caps and extras amounts) the explanation of this path needs."""
    out = [keys.member_ref(prep.unit), *(keys.unit_ref(u) for u in prep.units)]
    for u in prep.units:
        out += [keys.extra_ref(x.id) for x in snap.units[u].extras]
    return out


def build(
    snap: Snapshot,
    prep: PreparedPath,
    user: str,
    at: datetime,
    caps: Mapping[str, tuple[int | None, int | None]],
    counters: Mapping[str, tuple[int, int, int, int]],
    extra_counters: Mapping[str, tuple[int, int, int, int]],
) -> Explanation:
    """Assemble the report from raw values: ``caps`` by cfg field as (cost, tokens),
    ``counters`` by node and ``extra_counters`` by extra id as (cost up, cost reserved,
    tokens up, tokens reserved)."""
    nodes = prep.nodes(user)
    windows = (prep.windows[0], *prep.windows)
    reports: list[NodeReport] = []
    rooms: dict[Metric, list[Room]] = {m: [] for m in METRICS}
    extras_rooms: dict[Metric, list[list[tuple[str, int]]]] = {m: [] for m in METRICS}
    for i, node in enumerate(nodes):
        unit_id = prep.unit if i == 0 else node
        info = snap.units[unit_id]
        ref = keys.member_ref(prep.unit) if i == 0 else keys.unit_ref(node)
        eligible = set() if i == 0 else set(prep.eligible[i - 1])
        metrics: dict[Metric, MetricReport] = {}
        for mi, m in enumerate(METRICS):
            cap = caps.get(ref, (None, None))[mi]
            values = counters.get(node, (0, 0, 0, 0))
            used, reserved = values[2 * mi], values[2 * mi + 1]
            r = room(cap, used, reserved)
            xs: list[ExtraReport] = []
            row: list[tuple[str, int]] = []
            if i > 0:
                for x in info.extras:
                    amount = caps.get(keys.extra_ref(x.id), (None, None))[mi]
                    if amount is None:
                        continue
                    xvalues = extra_counters.get(x.id, (0, 0, 0, 0))
                    xu, xr = xvalues[2 * mi], xvalues[2 * mi + 1]
                    ok = x.id in eligible
                    xs.append(ExtraReport(x.id, amount, xu, xr, x.valid_from, x.valid_to, x.chargeback, ok))
                    if ok:
                        row.append((x.id, max(0, amount - xu - xr)))
            metrics[m] = MetricReport(cap, used, reserved, r, tuple(xs))
            rooms[m].append(r)
            extras_rooms[m].append(row)
        reports.append(
            NodeReport(
                node=node,
                unit=unit_id,
                name=f"member {user} of {info.name}" if i == 0 else info.name,
                kind="member" if i == 0 else info.kind,
                period=info.period,
                period_key=windows[i].key,
                resets_at=windows[i].end,
                metrics=metrics,
            )
        )
    available = {m: capacity(rooms[m], extras_rooms[m]) for m in METRICS}
    return Explanation(snap.institution, prep.unit, user, at, tuple(reports), available)
