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
from quota.resp import bulk, bulks

_FAR = 2**62
_USERS_KEPT = 4096  # per limit segment: the users whose packed limit arguments are kept


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


@dataclass(slots=True)
class LimitSegment:
    """The LIM arguments of one (unit, scopes) for ``[valid_from_ms, valid_until_ms)`` (lua/ops.lua):
    every limited node on the path, nearest first (members, units, then each scope's model and
    provider), and the chain's contract cells. Pre-encoded; a request adds only its member entries' key
    suffix ``m:<unit>:<user>`` and the clock arguments."""

    nodes: tuple[str, ...]  # limit node ids, in ARGV order (a refusal's index points here)
    member: tuple[bool, ...]  # per node: a member node (its key suffix carries the user)
    parts: tuple[bytes, ...]  # per node: its RPM TPM CC, packed
    static_lkeys: tuple[str, ...]  # full key names of the non-member nodes
    contracts: tuple[str, ...]  # contract node ids, in ARGV order
    contract_windows: tuple[Window, ...]
    contract_packed: bytes  # NC (NODE PKEY CEIL)*
    contract_nargs: int
    pkeys: tuple[str, ...]  # the contract cells' period keys
    windows_of: tuple[bool, ...]  # per node: it has a window (rpm or tpm)
    leases_of: tuple[bool, ...]  # per node: it has leases (concurrent)
    institution: str
    valid_from_ms: int
    valid_until_ms: int
    _merged: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    _plan: list[tuple[bytes, str | None, bytes, bool, bool]] = field(default_factory=list)
    _users: dict[str, tuple[bytes, tuple[str, ...]]] = field(default_factory=dict)

    def pkeys_with(self, path_pkeys: tuple[str, ...]) -> tuple[str, ...]:
        """The path's period keys and the contracts', each once (cached per path)."""
        out = self._merged.get(path_pkeys)
        if out is None:
            out = self._merged[path_pkeys] = tuple(dict.fromkeys((*path_pkeys, *self.pkeys)))
        return out

    def pack(self, user: str, now: bytes, lease_ms: bytes) -> tuple[int, bytes, tuple[str, ...]]:
        """(number of arguments, the packed LIM, every limit key the op touches) for one user's request."""
        n = len(self.nodes)
        if n == 0:
            return 1 + self.contract_nargs, bulk(0) + self.contract_packed, ()
        body = self._users.get(user)
        if body is None:
            body = self._pack_user(user)
        return 3 + 4 * n + self.contract_nargs, b"".join((bulk(n), now, lease_ms, body[0])), body[1]

    def _pack_user(self, user: str) -> tuple[bytes, tuple[str, ...]]:
        """The nodes and contracts packed for one user, and the limit keys; kept for the next request of the
        same user (a bounded cache: cleared when it holds _USERS_KEPT users)."""
        plan = self._plan or self._build_plan()
        out: list[bytes] = []
        lkeys = list(self.static_lkeys)
        for packed, member, part, has_w, has_l in plan:
            if member is None:
                out.append(packed)
                continue
            suffix = member + user
            out.append(bulk(suffix))
            out.append(part)
            if has_w:
                lkeys.append(keys.limit_window(self.institution, suffix))
            if has_l:
                lkeys.append(keys.limit_leases(self.institution, suffix))
        out.append(self.contract_packed)
        if len(self._users) >= _USERS_KEPT:
            self._users.clear()
        body = self._users[user] = (b"".join(out), tuple(lkeys))
        return body

    def _build_plan(self) -> list[tuple[bytes, str | None, bytes, bool, bool]]:
        """Per node: its key and limits packed (non-member nodes), or the member key prefix and limits."""
        self._plan = [
            (bulk(node) + part, keys.limit_member_key(node, "") if m else None, part, w, le)
            for node, m, part, w, le in zip(
                self.nodes, self.member, self.parts, self.windows_of, self.leases_of, strict=True
            )
        ]
        return self._plan


@dataclass
class Snapshot:
    institution: str
    token: str
    name: str
    calendar: Calendar
    units: dict[str, UnitInfo]
    _paths: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _prepared: dict[str, PreparedPath] = field(default_factory=dict)
    # Limit node id -> (rpm, tpm, concurrent); contract node id -> (period, ceiling in micro-units).
    limits: dict[str, tuple[int | None, int | None, int | None]] = field(default_factory=dict)
    contracts: dict[str, tuple[Period, int]] = field(default_factory=dict)
    _segments: dict[tuple[str, tuple[tuple[str, str], ...]], LimitSegment | None] = field(
        default_factory=dict
    )

    @property
    def limited(self) -> bool:
        """Whether any limit or contract exists: without, reserve sends the constant no-limits segment."""
        return bool(self.limits or self.contracts)

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
        snap = Snapshot(doc["id"], token, doc["name"], cal, units)
        for node, (rpm, tpm, cc) in doc.get("lim", {}).items():
            snap.limits[node] = (rpm, tpm, cc)
        for node, (period, cost) in doc.get("con", {}).items():
            snap.contracts[node] = (period, int(cost))
        return snap

    def limit_segment(
        self, unit: str, scopes: tuple[tuple[str, str], ...], now_ms: int
    ) -> LimitSegment | None:
        """The limits and contracts a request on ``unit`` served by one of ``scopes`` ((provider, model) of
        its chain) must fit; None when there are none (the zero-cost path). Cached per (unit, scopes) until
        a contract window ends."""
        ck = (unit, scopes)
        if ck in self._segments:
            seg = self._segments[ck]
            if seg is None or seg.valid_from_ms <= now_ms < seg.valid_until_ms:
                return seg
        seg = self._segment(unit, scopes, now_ms)
        self._segments[ck] = seg
        return seg

    def _segment(self, unit: str, scopes: tuple[tuple[str, str], ...], now_ms: int) -> LimitSegment | None:
        path = self.path(unit)
        order = [keys.limit_member(u) for u in path] + [keys.limit_unit(u) for u in path]
        cons: list[str] = []
        for prov, model in scopes:
            order += [keys.limit_model(prov, model), keys.limit_provider(prov)]
            cons += [keys.contract_node(prov, model), keys.contract_node(prov)]
        nodes = [n for n in dict.fromkeys(order) if n in self.limits]
        cnodes = [c for c in dict.fromkeys(cons) if c in self.contracts]
        if not nodes and not cnodes:
            return None
        at = datetime.fromtimestamp(now_ms / 1000, UTC)
        lo, hi = -_FAR, _FAR
        cwin: list[Window] = []
        cargs: list[str | int] = [len(cnodes)]
        for c in cnodes:
            period, ceil = self.contracts[c]
            w = window(period, at, self.calendar)
            cwin.append(w)
            if w.start is not None:
                lo = max(lo, _ms(w.start))
            if w.end is not None:
                hi = min(hi, _ms(w.end))
            cargs += [c, w.key, ceil]
        lims = [self.limits[n] for n in nodes]
        member = tuple(n.startswith("m:") for n in nodes)
        static: list[str] = []
        for n, is_member, (rpm, tpm, cc) in zip(nodes, member, lims, strict=True):
            if not is_member and (rpm or tpm):
                static.append(keys.limit_window(self.institution, n))
            if not is_member and cc:
                static.append(keys.limit_leases(self.institution, n))
        return LimitSegment(
            nodes=tuple(nodes),
            member=member,
            parts=tuple(bulks(["-" if v is None else v for v in lim]) for lim in lims),
            static_lkeys=tuple(static),
            contracts=tuple(cnodes),
            contract_windows=tuple(cwin),
            contract_packed=bulks(cargs),
            contract_nargs=len(cargs),
            pkeys=tuple(dict.fromkeys(w.key for w in cwin)),
            windows_of=tuple(bool(rpm or tpm) for rpm, tpm, _ in lims),
            leases_of=tuple(bool(cc) for _, _, cc in lims),
            institution=self.institution,
            valid_from_ms=lo,
            valid_until_ms=hi,
        )

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
