"""Rate, token and concurrency limits and contract ceilings in plain Python: the reference of lua/ops.lua.

The script is the implementation (it must run inside Redis, atomically with the budget reservation);
this module states the same rules over dicts so a model-based test can demand that both agree after
every step (tests/quota/test_limits.py). Budgets are left out: the reference starts from the output
tokens the budget granted. Times are epoch milliseconds on the limit clock.

Window: 60 one-second buckets per node. Second ``s`` counts while ``s > now_sec - 60``. Requests count 1
at reserve, tokens the reservation's bound; settle moves the reservation's bucket by ``actual - held``
while it is in the window. Leases: ``rid -> deadline``; a lease is alive while ``deadline > now``, and
dead ones are dropped when a reserve looks at the node. See SEMANTICS.md "Limits and contracts".
"""

from __future__ import annotations

from dataclasses import dataclass, field

MICRO = 1_000_000


def cost_of(tin: int, n: int, pin: int, pout: int) -> int:
    return -(-(tin * pin + n * pout) // MICRO)


@dataclass(frozen=True)
class Entry:
    """One limited node of a request, as the reserve sends it (key suffix, its limits)."""

    suffix: str
    rpm: int | None
    tpm: int | None
    cc: int | None

    @property
    def windowed(self) -> bool:
        return bool(self.rpm or self.tpm)


@dataclass(frozen=True)
class Con:
    node: str
    pkey: str
    ceil: int


@dataclass
class Window:
    buckets: dict[int, list[int]] = field(default_factory=dict)  # second -> [requests, tokens]

    def prune(self, sec: int) -> None:
        for s in [s for s in self.buckets if s <= sec - 60]:
            del self.buckets[s]

    def totals(self) -> tuple[int, int]:
        return sum(b[0] for b in self.buckets.values()), sum(b[1] for b in self.buckets.values())

    def add(self, s: int, dr: int, dt: int) -> None:
        b = self.buckets.setdefault(s, [0, 0])
        b[0], b[1] = max(0, b[0] + dr), max(0, b[1] + dt)

    def reset_ms(self, now: int) -> int:
        return max(0, (min(self.buckets) + 60) * 1000 - now) if self.buckets else 0

    def retry_ms(self, need_r: int, need_t: int, now: int) -> int:
        """When enough of the oldest buckets have left for the need to fit; -1: never."""
        fr = ft = 0
        for s in sorted(self.buckets):
            fr, ft = fr + self.buckets[s][0], ft + self.buckets[s][1]
            if fr >= need_r and ft >= need_t:
                return max(1, (s + 60) * 1000 - now)
        return -1


@dataclass
class Hold:
    sec: int
    entries: tuple[Entry, ...]
    held_tokens: int
    cons: tuple[Con, ...]
    held_cost: int


@dataclass(frozen=True)
class Admit:
    output_tokens: int
    clamped: bool
    cost: int
    tokens: int
    rate: tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Limited:
    what: str
    index: int
    limit: int
    needed: int
    retry_ms: int  # -1: never
    rate: tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class ContractFull:
    index: int
    needed: int
    room: int


def served_by(node: str, served: str) -> bool:
    """Whether a provider, model or contract node belongs to the tier that served (``''``: unknown, all)."""
    if not served:
        return True
    kind, _, ident = node.partition(":")
    if kind == "p" or (kind == "c" and "|" not in ident):
        return ident == served.split("|", 1)[0]
    if kind in ("pm", "c"):
        return ident == served
    return True


@dataclass
class LimitModel:
    windows: dict[str, Window] = field(default_factory=dict)
    leases: dict[str, dict[str, int]] = field(default_factory=dict)  # suffix -> rid -> deadline ms
    contracts: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (pkey, node) -> [up, held]
    holds: dict[str, Hold] = field(default_factory=dict)

    def _window(self, suffix: str, sec: int) -> Window:
        w = self.windows.setdefault(suffix, Window())
        w.prune(sec)
        return w

    def _alive(self, suffix: str, now: int) -> int:
        lease = self.leases.setdefault(suffix, {})
        for rid in [r for r, d in lease.items() if d <= now]:
            del lease[rid]
        return len(lease)

    def _cell(self, c: Con | tuple[str, str]) -> list[int]:
        key = (c.pkey, c.node) if isinstance(c, Con) else c
        return self.contracts.setdefault(key, [0, 0])

    def rate(self, entries: tuple[Entry, ...], now: int) -> tuple[int, int, int, int, int, int]:
        h = [-1, -1, -1, -1, -1, -1]
        for e in entries:
            if not e.windowed:
                continue
            w = self.windows[e.suffix]
            req, tok = w.totals()
            if e.rpm and (h[0] == -1 or max(0, e.rpm - req) < h[1]):
                h[0:3] = [e.rpm, max(0, e.rpm - req), w.reset_ms(now)]
            if e.tpm and (h[3] == -1 or max(0, e.tpm - tok) < h[4]):
                h[3:6] = [e.tpm, max(0, e.tpm - tok), w.reset_ms(now)]
        return h[0], h[1], h[2], h[3], h[4], h[5]

    def reserve(
        self,
        rid: str,
        entries: tuple[Entry, ...],
        cons: tuple[Con, ...],
        tin: int,
        n0: int,
        prices: tuple[int, int],
        nmin: int,
        now: int,
        lease_ms: int,
    ) -> Admit | Limited | ContractFull:
        """``n0``: the output tokens the budget granted (the request asked for them, nothing clamped)."""
        pin, pout = prices
        sec = now // 1000
        for e in entries:
            if e.windowed:
                self._window(e.suffix, sec)
            if e.cc:
                self._alive(e.suffix, now)
        for i, e in enumerate(entries):
            if e.rpm:
                w = self.windows[e.suffix]
                req = w.totals()[0]
                if req + 1 > e.rpm:
                    retry = w.retry_ms(req + 1 - e.rpm, 0, now)
                    return Limited("requests", i, e.rpm, 1, retry, self.rate(entries, now))
            if e.cc and len(self.leases[e.suffix]) + 1 > e.cc:
                return Limited("concurrent", i, e.cc, 1, 1000, self.rate(entries, now))
        n = n0
        for e in entries:
            if e.tpm:
                n = min(n, max(0, e.tpm - self.windows[e.suffix].totals()[1]) - tin)
        room_c, ci = None, 0
        for j, c in enumerate(cons):
            up, held = self._cell(c)
            r = max(0, c.ceil - up - held)
            if room_c is None or r < room_c:
                room_c, ci = r, j
        if room_c is not None and cost_of(tin, n, pin, pout) > room_c:
            n = -1 if pout == 0 else min(n, (room_c * MICRO - tin * pin) // pout)
        if not (n >= n0 or (n >= nmin and n >= 0)):
            return self._refuse(entries, cons, tin, n0, pin, pout, nmin, now, room_c, ci)
        amt_c, amt_t = cost_of(tin, n, pin, pout), tin + n
        for e in entries:
            if e.windowed:
                self.windows[e.suffix].add(sec, 1, amt_t)
            if e.cc:
                self.leases[e.suffix][rid] = now + lease_ms
        for c in cons:
            self._cell(c)[1] += amt_c
        self.holds[rid] = Hold(sec, entries, amt_t, cons, amt_c)
        return Admit(n, n < n0, amt_c, amt_t, self.rate(entries, now))

    def _refuse(
        self,
        entries: tuple[Entry, ...],
        cons: tuple[Con, ...],
        tin: int,
        n0: int,
        pin: int,
        pout: int,
        nmin: int,
        now: int,
        room_c: int | None,
        ci: int,
    ) -> Limited | ContractFull:
        need_n = min(nmin, n0)
        need_c = cost_of(tin, need_n, pin, pout)
        if room_c is not None and need_c > room_c:
            return ContractFull(ci, need_c, room_c)
        need, at, retry = tin + need_n, -1, 0
        for i, e in enumerate(entries):
            if not e.tpm:
                continue
            w = self.windows[e.suffix]
            tok = w.totals()[1]
            if e.tpm - tok < need:
                r = w.retry_ms(0, tok + need - e.tpm, now) if need <= e.tpm else -1
                if at == -1 or (retry != -1 and (r == -1 or r > retry)):
                    at, retry = i, r
        tpm = entries[at].tpm
        assert tpm is not None
        return Limited("tokens", at, tpm, need, retry, self.rate(entries, now))

    def _undo(
        self, rid: str, mode: str, now: int, cost: int = 0, tokens: int = 0, served: str = ""
    ) -> list[tuple[str, str, int]]:
        h = self.holds.pop(rid)
        sec = now // 1000
        for e in h.entries:
            if e.windowed and mode != "X":
                w = self._window(e.suffix, sec)
                if h.sec > sec - 60:
                    if mode == "L" or not served_by(e.suffix, served):
                        w.add(h.sec, -1, -h.held_tokens)
                    else:
                        w.add(h.sec, 0, tokens - h.held_tokens)
            if e.cc:
                self.leases.setdefault(e.suffix, {}).pop(rid, None)
        charged = []
        for c in h.cons:
            cell = self._cell(c)
            cell[1] = max(0, cell[1] - h.held_cost)
            amount = (
                h.held_cost if mode == "X" else cost if mode == "S" and served_by(c.node, served) else None
            )
            if amount is not None:
                cell[0] += amount
                charged.append((c.node, c.pkey, amount))
        return charged

    def settle(self, rid: str, cost: int, tokens: int, served: str, now: int) -> list[tuple[str, str, int]]:
        return self._undo(rid, "S", now, cost, tokens, served)

    def release(self, rid: str, now: int) -> None:
        self._undo(rid, "L", now)

    def expire(self, rid: str) -> list[tuple[str, str, int]]:
        return self._undo(rid, "X", 0)

    def renew(self, rid: str, lease_at: int) -> None:
        h = self.holds.get(rid)
        if h is None:
            return
        for e in h.entries:
            if e.cc:  # a lapsed (even pruned) lease of a live hold comes back: its request still runs
                self.leases.setdefault(e.suffix, {})[rid] = lease_at
