"""The compiled institution as one replica holds it in memory.

Read from ``eq:{I}:cfg``'s ``snap`` field together with the compile token,
cached per process and dropped on invalidation (or when a reserve answers
STALE). From it the engine prepares, per unit, the arguments of the reserve
and settle scripts: the path to the root, each node's period key and the
extras valid right now. A prepared path is reused until the earliest moment
one of those changes (a period ends, an extra's window opens or closes), so
the hot path does no date arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from quota import keys
from quota.model import Metric, Period, Semester
from quota.periods import Calendar, Window, local_midnight, window
from quota.resp import bulks

_FAR = 2**62


@dataclass(frozen=True, slots=True)
class ExtraInfo:
    id: str
    amounts: dict[Metric, int]
    valid_from: date
    valid_to: date
    chargeback: str | None
    start: datetime  # first instant of valid_from, local
    end: datetime  # first instant after valid_to, local


@dataclass(frozen=True, slots=True)
class UnitInfo:
    id: str
    parent: str | None
    kind: str
    name: str
    period: Period
    caps: dict[Metric, int | None]
    member_caps: dict[Metric, int | None]
    member_count: int
    extras: tuple[ExtraInfo, ...]  # spend order: soonest valid_to first, then id


@dataclass(slots=True)
class PreparedPath:
    """Script arguments for one unit's path, valid for ``[valid_from_ms, valid_until_ms)``.

    The path is kept RESP-encoded (``unit_packed``, the PATH entry of lua/ops.lua: node count,
    the member nodes' cap field and period key, then the unit nodes); a batch sends it once for
    all its requests on this unit, each adding only its member node.
    """

    unit: str
    units: tuple[str, ...]  # the unit .. root
    windows: tuple[Window, ...]  # per unit
    eligible: tuple[tuple[str, ...], ...]  # per unit: extras valid now, in spend order
    pkeys: tuple[str, ...]  # distinct period keys of the path
    unit_packed: bytes
    unit_nargs: int
    valid_from_ms: int
    valid_until_ms: int

    def nodes(self, user: str) -> tuple[str, ...]:
        return (keys.member_node(user, self.unit), *self.units)

    def period_keys(self) -> tuple[str, ...]:
        return (self.windows[0].key, *(w.key for w in self.windows))


@dataclass
class Snapshot:
    institution: str
    token: str
    name: str
    calendar: Calendar
    units: dict[str, UnitInfo]
    _paths: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _prepared: dict[str, PreparedPath] = field(default_factory=dict)

    @staticmethod
    def parse(token: str, raw: str | bytes) -> Snapshot:
        doc: dict[str, Any] = json.loads(raw)
        cal = Calendar(
            timezone=doc["tz"],
            semesters=tuple(
                Semester(s[0], date.fromisoformat(s[1]), date.fromisoformat(s[2])) for s in doc["sem"]
            ),
            year_start_month=int(doc["ysm"]),
        )
        units: dict[str, UnitInfo] = {}
        for uid, u in doc["units"].items():
            extras = []
            for x in u["x"]:
                vf, vt = date.fromisoformat(x["f"]), date.fromisoformat(x["t"])
                extras.append(
                    ExtraInfo(
                        id=x["id"],
                        amounts={m: int(a) for m, a in x["a"].items()},
                        valid_from=vf,
                        valid_to=vt,
                        chargeback=x["cb"],
                        start=local_midnight(vf, cal),
                        end=local_midnight(vt + timedelta(days=1), cal),
                    )
                )
            units[uid] = UnitInfo(
                id=uid,
                parent=u["p"],
                kind=u["k"],
                name=u["n"],
                period=u["per"],
                caps=u["cap"],
                member_caps=u["mcap"],
                member_count=int(u["mc"]),
                extras=tuple(extras),
            )
        return Snapshot(doc["id"], token, doc["name"], cal, units)

    def path(self, unit: str) -> tuple[str, ...]:
        cached = self._paths.get(unit)
        if cached is not None:
            return cached
        if unit not in self.units:
            raise KeyError(f"institution {self.institution}: unknown unit {unit!r}")
        out = [unit]
        while (parent := self.units[out[-1]].parent) is not None:
            out.append(parent)
        path = tuple(out)
        self._paths[unit] = path
        return path

    def prepared(self, unit: str, now_ms: int) -> PreparedPath:
        p = self._prepared.get(unit)
        if p is not None and p.valid_from_ms <= now_ms < p.valid_until_ms:
            return p
        p = self._prepare(unit, now_ms)
        self._prepared[unit] = p
        return p

    def _prepare(self, unit: str, now_ms: int) -> PreparedPath:
        at = datetime.fromtimestamp(now_ms / 1000, UTC)
        units = self.path(unit)
        windows = tuple(window(self.units[u].period, at, self.calendar) for u in units)
        lo, hi = -_FAR, _FAR
        for w in windows:
            if w.start is not None:
                lo = max(lo, _ms(w.start))
            if w.end is not None:
                hi = min(hi, _ms(w.end))
        eligible: list[tuple[str, ...]] = []
        for u in units:
            ok = []
            for x in self.units[u].extras:
                start, end = _ms(x.start), _ms(x.end)
                if start <= now_ms < end:
                    ok.append(x.id)
                    lo, hi = max(lo, start), min(hi, end)
                elif now_ms < start:
                    hi = min(hi, start)
                else:
                    lo = max(lo, end)
            eligible.append(tuple(ok))
        args: list[str | int] = [len(units) + 1, keys.member_ref(unit), windows[0].key]
        pkeys: list[str] = []
        for u, w, valid in zip(units, windows, eligible, strict=True):
            if w.key not in pkeys:
                pkeys.append(w.key)
            args += [u, keys.unit_ref(u), w.key, len(valid), *valid]
        return PreparedPath(
            unit=unit,
            units=units,
            windows=windows,
            eligible=tuple(eligible),
            pkeys=tuple(pkeys),
            unit_packed=bulks(args),
            unit_nargs=len(args),
            valid_from_ms=lo,
            valid_until_ms=hi,
        )


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)
