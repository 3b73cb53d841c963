"""QuotaEngine: the Redis adapter of the budget rules (one object per process).

Hot path: :meth:`QuotaEngine.reserve` and :meth:`QuotaEngine.settle` are one
atomic step each in ``lua/ops.lua``; the operations a process issues in one
event-loop turn travel together (one EVALSHA per institution, see
quota/batching.py), so a request costs at most one script call and one
round trip, shared with its neighbours. The path, its period
keys and the eligible extras come from a compiled snapshot cached in this
process; caps and counters are read inside the script, from Redis, never from
PostgreSQL. The script checks the snapshot's compile token, so a budget edit
applies to the next request on every replica even before the pub/sub
invalidation arrives.

Time: the caller's clock (``clock``, or ``now=`` per call, as epoch seconds)
decides period windows and extras validity (replicas are expected to run NTP).
Deadlines and the sweep follow Redis's clock (``TIME`` inside the scripts), so a
replica whose clock runs ahead cannot sweep the live holds of the others, nor one
behind keep a dead replica's holds past their TTL (``lease_clock`` replaces it
in tests that simulate time). A request belongs to the periods it was reserved in: its settle
charges those windows even if it finishes after a reset.

Failure model:

* A replica that dies between reserve and settle leaves holds with a
  deadline (``reservation_ttl``). :meth:`sweep` (run by every replica's
  :meth:`run_sweeper`, safe to run concurrently) releases them. A settle that
  arrives after that charges the actual usage without undoing anything
  twice (status ``late``); expired records are remembered for
  ``expired_retention`` seconds, after which a settle is ``gone``.
* A Redis that lost its data (restart without persistence, failover to an
  empty replica) is detected by the missing compile token on the first
  reserve: with a ``loader`` the engine rebuilds from the ledger once (the
  first replica wins, the others see it done) and retries; without one it
  raises :class:`InstitutionNotLoaded`. Redis must not evict keys
  (``maxmemory-policy noeviction``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from quota import keys, scripts
from quota.batching import OpBatcher
from quota.compile import compile_spec, install, new_token, server_run_id
from quota.explain import Explanation, build, cap_fields
from quota.model import METRICS, InstitutionSpec, Metric
from quota.periods import window_for_key
from quota.rebuild import CounterValues, Drift, compare, recompute_counters
from quota.resp import bulk, bulks
from quota.results import (
    Charge,
    ExtraTake,
    LimitRefusal,
    RateInfo,
    Refusal,
    Remaining,
    Reservation,
    Settlement,
    UnsettledHold,
)
from quota.snapshot import LimitSegment, Snapshot
from quota.waterfall import MAX_EXACT, cost_of

log = logging.getLogger(__name__)

Loader = Callable[[str], Awaitable[tuple[InstitutionSpec, Iterable[Charge]]]]
_CODE: dict[str, Metric] = {"cost": "cost", "tokens": "tokens"}


_R, _S, _L, _X, _N = bulk("R"), bulk("S"), bulk("L"), bulk("X"), bulk("N")
# The LIM segment of a reserve on a path with no limit and no contract: NL 0, NC 0 (lua/ops.lua reads two
# numbers and does nothing else; the record and the reply are what they were before limits existed).
_NO_LIMITS = bulks(("0", "0"))
_REDIS_NOW = bulk("-")  # a limit op's NOW: Redis's clock
Scopes = tuple[tuple[str, str], ...]  # (provider id, model id) of each tier a request may be served by
# What a malformed unsettled entry raises, parsed or billed: it goes to the dead letters, not back.
_POISON = (ValueError, TypeError, KeyError, IndexError)


# KEYS[1] cfg, ARGV[1] the server's run_id. Compiled under another run_id: drop the token (1). Not yet
# recorded (compiled or rebuilt since the last check): record it (0). Not compiled: leave it to _recover.
_EPOCH_LUA = """
if redis.call('HEXISTS', KEYS[1], 'ver') == 0 then return 0 end
local rid = redis.call('HGET', KEYS[1], 'rid')
if rid == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rid', ARGV[1])
if not rid then return 0 end
redis.call('HDEL', KEYS[1], 'ver')
return 1
"""


class InstitutionNotLoaded(LookupError):
    """Redis has no compiled budget for this institution (new, or Redis lost its data): rebuild first."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _check_ints(**values: int) -> None:
    for name, v in values.items():
        if type(v) is not int or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")


class QuotaEngine:
    def __init__(
        self,
        redis: Redis,
        *,
        reservation_ttl: float = 600.0,
        min_output_tokens: int = 16,
        expired_retention: float = 86400.0,
        counter_retention: float = 40 * 86400.0,
        loader: Loader | None = None,
        clock: Callable[[], float] = time.time,
        max_inflight: int = 2,
        max_batch: int = 256,
        unsettled_lease: float | None = None,
        settled_retention: float | None = None,
        lease_clock: Callable[[], float] | None = None,
        limit_lease: float = 30.0,
        limit_clock: Callable[[], float] | None = None,
    ) -> None:
        self.redis = redis
        self.reservation_ttl = reservation_ttl
        self.min_output_tokens = min_output_tokens
        self.expired_retention = expired_retention
        self.counter_retention = counter_retention
        # How long a drain round may hold unsettled entries before another takes them again (a TTL: like a
        # hold, a claim outlives it only when its process died or could not reach its pipeline).
        self.unsettled_lease = reservation_ttl if unsettled_lease is None else unsettled_lease
        # How long a settle's reply is kept for a repeat of it (gateway/accounting.py retries a settle whose
        # reply was lost for up to two TTLs).
        self.settled_retention = 2 * reservation_ttl + 60 if settled_retention is None else settled_retention
        self._loader = loader
        self._clock = clock
        self._lease_clock = lease_clock  # None: Redis's clock (deadlines, sweep); set only by simulations
        self._lease_args: dict[int, bytes] = {}
        # Concurrency leases (EDUAIQ_LIMIT_LEASE_SECONDS): a dead gateway's slots come back within one.
        self.limit_lease = limit_lease
        self._limit_lease_ms = bulk(int(limit_lease * 1000))
        self._limit_clock = limit_clock  # None: Redis's clock (windows, leases); set only by tests
        self._batcher = OpBatcher(redis, max_ops=max_batch, max_inflight=max_inflight)
        self._rid_prefix = secrets.token_hex(6)
        self._rid_seq = itertools.count()
        self._snaps: dict[str, Snapshot] = {}
        self._recovering: dict[str, asyncio.Future[None]] = {}
        self._loading: dict[str, asyncio.Future[Snapshot]] = {}
        # Every new connection of this client's pool checks Redis's epoch before its first command
        # (:meth:`_epoch_handshake`); set before any connection exists, so every one of them does.
        self._run_id: str | None = None
        self._epoch_checking: tuple[str, asyncio.Future[None]] | None = None
        pool_kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", None)
        if isinstance(pool_kwargs, dict):
            pool_kwargs.setdefault("redis_connect_func", self._epoch_handshake)

    @classmethod
    def from_url(cls, url: str, *, redis_options: dict[str, Any] | None = None, **kwargs: Any) -> QuotaEngine:
        """`redis_options`: the client's timeouts (`Settings.redis_options()`, EDUAIQ_REDIS_*)."""
        return cls(Redis.from_url(url, decode_responses=True, **(redis_options or {})), **kwargs)

    async def close(self) -> None:
        await self._batcher.drain()
        await self.redis.aclose()

    def _now_ms(self, now: float | None) -> int:
        return int((self._clock() if now is None else now) * 1000)

    def _lease_at(self, offset_ms: int) -> bytes:
        """A script's time argument: Redis's clock plus ``offset_ms`` ('+<ms>'), or the simulated lease clock."""
        if self._lease_clock is None:
            packed = self._lease_args.get(offset_ms)
            if packed is None:
                packed = self._lease_args[offset_ms] = bulk(f"+{offset_ms}")
            return packed
        return bulk(int(self._lease_clock() * 1000) + offset_ms)

    def _limit_now(self) -> bytes:
        """NOW of a limit op: '-' (Redis's clock, so every replica counts windows on one clock), or a test's."""
        if self._limit_clock is None:
            return _REDIS_NOW
        return bulk(int(self._limit_clock() * 1000))

    def _limit_lease_at(self) -> bytes:
        """A renewed concurrency lease's deadline, on the limit clock."""
        ms = int(self.limit_lease * 1000)
        if self._limit_clock is None:
            return self._lease_at(ms)
        return bulk(int(self._limit_clock() * 1000) + ms)

    async def _lease_now_ms(self) -> int:
        if self._lease_clock is not None:
            return int(self._lease_clock() * 1000)
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    # --- operations --------------------------------------------------------------------

    def _new_id(self) -> str:
        """Unique without a syscall: a random per-engine prefix and a counter."""
        return f"{self._rid_prefix}{next(self._rid_seq):x}"

    def _submit(
        self,
        institution: str,
        nhead: int,
        head: bytes,
        pkeys: tuple[str, ...],
        path: bytes | None = None,
        path_nargs: int = 0,
        member: str = "",
        lkeys: tuple[str, ...] = (),
    ) -> asyncio.Future[Any]:
        member_bulk = bulk(member) if path is not None else b""
        return self._batcher.submit(institution, nhead, head, pkeys, path, path_nargs, member_bulk, lkeys)

    async def _op(self, *args: Any) -> Any:
        """Submit and wait. Once queued, an operation runs even if its caller is cancelled."""
        return await self._submit(*args)

    def _release_orphan(
        self,
        institution: str,
        rid: str,
        pkeys: tuple[str, ...],
        lkeys: tuple[str, ...],
        fut: asyncio.Future[Any],
    ) -> None:
        """A reserve whose caller was cancelled (client gone) still made its hold: give it back now
        rather than at the deadline."""
        if fut.cancelled() or fut.exception() is not None:
            return
        if _text(fut.result()[0]) == "OK":
            head = _L + bulk(rid) + self._limit_now()
            orphan = self._submit(institution, 3, head, pkeys, lkeys=lkeys)
            orphan.add_done_callback(lambda f: f.cancelled() or f.exception())

    # --- snapshot ----------------------------------------------------------------------

    async def snapshot(self, institution: str) -> Snapshot:
        """The compiled institution as this process sees it (cached until invalidated).

        Concurrent callers of a cold cache share one read (a restarted replica
        under load would otherwise open a connection per waiting request).
        """
        snap = self._snaps.get(institution)
        if snap is not None:
            return snap
        pending = self._loading.get(institution)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._loading[institution] = fut
        try:
            snap = await self._read_snapshot(institution)
            fut.set_result(snap)
            return snap
        except BaseException as err:
            if isinstance(err, Exception):
                fut.set_exception(err)
                fut.exception()  # waiters re-raise it; mark it retrieved
            else:
                fut.cancel()
            raise
        finally:
            del self._loading[institution]

    async def _read_snapshot(self, institution: str) -> Snapshot:
        for _ in range(3):
            token, raw = await self.redis.hmget(keys.cfg(institution), ["ver", "snap"])
            if token is not None and raw is not None:
                snap = Snapshot.parse(_text(token), raw)
                self._snaps[institution] = snap
                return snap
            await self._recover(institution)
        raise InstitutionNotLoaded(institution)

    def invalidate(self, institution: str) -> None:
        self._snaps.pop(institution, None)

    def cached_snapshot(self, institution: str) -> Snapshot | None:
        """The snapshot this process holds now, if any (diagnostics: is this replica current?)."""
        return self._snaps.get(institution)

    async def is_compiled(self, institution: str) -> bool:
        """Cheap check a replica can make before serving: the compile token exists."""
        return bool(await self.redis.hexists(keys.cfg(institution), "ver"))

    async def check_epoch(self, institutions: Iterable[str] | None = None) -> list[str]:
        """Drop the compile token of every institution compiled before Redis last restarted or failed over,
        so that its next request rebuilds it from the ledger (:meth:`_recover`, fenced by the loader).

        Why: a Redis that comes back with *some* of its data (an append-only file missing its last
        second, a replica that lagged its primary) keeps the compile token, so nothing else would notice
        the settles it lost. Each compiled institution records the server's ``run_id`` (a new one after
        every restart, and another server's after a failover) the first time this check sees it; a
        different one means the counters may be older than the ledger. A clean restart rebuilds too: it
        cannot be told apart, and a fenced rebuild is only a moment of 503s. Returns the institutions
        reset. Run every second by each gateway (gateway/ledger_watch.py); replicas racing are harmless:
        the first one resets, the others see the new ``run_id`` recorded."""
        run_id = await server_run_id(self.redis)
        insts = list(institutions) if institutions is not None else await self.institutions()

        async def epoch_script(inst: str) -> Any:
            return await self.redis.eval(_EPOCH_LUA, 1, keys.cfg(inst), run_id)

        return await self._disown_older(insts, epoch_script)

    async def _disown_older(
        self, insts: Iterable[str], epoch_script: Callable[[str], Awaitable[Any]]
    ) -> list[str]:
        """Run the epoch script for each institution (through the caller's connection); those it reset
        lose their cached snapshot. Returns them."""
        reset = []
        for inst in insts:
            if int(await epoch_script(inst)):
                self.invalidate(inst)
                reset.append(inst)
        if reset:
            log.warning("Redis restarted or failed over: rebuilding %s from the ledger", ", ".join(reset))
        return reset

    async def _epoch_handshake(self, conn: Connection) -> None:
        """redis-py's connect hook (``redis_connect_func``): the usual handshake, then, if the server's
        ``run_id`` is not the one this process last saw, :meth:`check_epoch` for every institution, on
        this connection, before it carries anything else.

        Why here and not only in the once-a-second watch: a Redis that restarts or fails over drops every
        connection, so the first request after it always opens a new one; judged by the watch alone, the
        requests of that second were admitted against counters older than the ledger (a fault run funded
        5,424 µ$ on a 3,000 µ$ cap). An error here fails the command (the request answers 503), never
        lets it through unchecked."""
        await conn.on_connect()
        await conn.send_command("INFO", "server")
        info = _text(await conn.read_response())
        run_id = next(
            (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("run_id:")), ""
        )
        if not run_id or run_id == self._run_id:
            return
        # The connections opened together after a restart: one checks, the others wait for it (each
        # checking would be one script per institution per connection).
        checking = self._epoch_checking
        if checking is not None and checking[0] == run_id:
            await asyncio.shield(checking[1])
            return
        done = asyncio.get_running_loop().create_future()
        self._epoch_checking = (run_id, done)
        try:
            await self._epoch_check_on(conn, run_id)
            self._run_id = run_id
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(
                exc if isinstance(exc, Exception) else ConnectionError("epoch check cancelled")
            )
            done.exception()  # retrieved: a failure here fails the connection that ran it
            raise
        finally:
            self._epoch_checking = None

    async def _epoch_check_on(self, conn: Connection, run_id: str) -> None:
        """:meth:`check_epoch` on a connection being opened (the client's pool cannot be used from its hook)."""
        await conn.send_command("SMEMBERS", keys.INSTITUTIONS)

        async def epoch_script(inst: str) -> Any:
            await conn.send_command("EVAL", _EPOCH_LUA, 1, keys.cfg(inst), run_id)
            return await conn.read_response()

        await self._disown_older(sorted(_text(x) for x in await conn.read_response()), epoch_script)

    async def _recover(self, institution: str) -> None:
        self.invalidate(institution)
        if self._loader is None:
            raise InstitutionNotLoaded(institution)
        pending = self._recovering.get(institution)
        if pending is not None:  # one rebuild per process at a time; the others wait for it
            await pending
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._recovering[institution] = fut
        try:
            spec, charges = await self._loader(institution)
            await self.rebuild(spec, recompute_counters(charges), force=False)
            fut.set_result(None)
        except Exception as err:
            fut.set_exception(err)
            fut.exception()  # the waiters re-raise it; this caller raises it below
            raise
        except BaseException:
            fut.cancel()
            raise
        finally:
            del self._recovering[institution]

    # --- hot path ----------------------------------------------------------------------

    async def reserve(
        self,
        institution: str,
        unit: str,
        user: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        price_in: int,
        price_out: int,
        min_output_tokens: int | None = None,
        request_id: str = "",
        meta: str = "",
        now: float | None = None,
        scopes: Scopes = (),
    ) -> Reservation | Refusal | LimitRefusal:
        """Hold an upper bound for one request, clamping ``max_output_tokens`` if only less fits.

        ``input_tokens`` is the prompt's upper bound (images included); prices
        are micro-units per 1M tokens. Returns a :class:`Reservation` to settle
        or release, or a :class:`Refusal` naming the binding unit. ``meta`` (one line) is kept with the
        hold and handed back by :meth:`drain_unsettled` if the hold expires unsettled.

        ``scopes``: (provider, model) of every tier that may serve the request; the request must fit the
        limits and contract ceilings of each (conservative: settle refunds the tiers that did not serve).
        A full rate, token or concurrency limit returns a :class:`LimitRefusal`; a full contract a
        :class:`Refusal` with ``kind="contract"``. Without limits in the institution it costs nothing.
        """
        nmin = self.min_output_tokens if min_output_tokens is None else min_output_tokens
        if not user.isprintable():  # the id goes into tab- and line-separated hold records
            raise ValueError(f"user id {user!r} has control characters")
        if "\n" in meta:
            raise ValueError("meta must be one line")
        _check_ints(
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            price_in=price_in,
            price_out=price_out,
            min_output_tokens=nmin,
        )
        if input_tokens * price_in + max_output_tokens * price_out > MAX_EXACT or (
            input_tokens + max_output_tokens > MAX_EXACT
        ):
            raise ValueError("request bound too large to compute exactly")
        now_ms = self._now_ms(now)
        deadline = self._lease_at(int(self.reservation_ttl * 1000))
        amounts = bulks((input_tokens, max_output_tokens, price_in, price_out, nmin))
        for _ in range(4):
            snap = await self.snapshot(institution)
            prep = snap.prepared(unit, now_ms)
            rid = self._new_id()
            seg = snap.limit_segment(unit, scopes, now_ms) if snap.limited else None
            lkeys: tuple[str, ...] = ()
            if seg is None:
                nlim, lim, lkeys, pkeys = 2, _NO_LIMITS, (), prep.pkeys
            else:
                nlim, lim, lkeys = seg.pack(user, self._limit_now(), self._limit_lease_ms)
                pkeys = seg.pkeys_with(prep.pkeys)
            head = b"".join((_R, bulk(snap.token), deadline, bulk(rid), amounts, bulk(meta), lim))
            member = keys.member_node(user, unit)
            fut = self._submit(
                institution, 10 + nlim, head, pkeys, prep.unit_packed, prep.unit_nargs, member, lkeys
            )
            try:
                reply = await asyncio.shield(fut)
            except asyncio.CancelledError:
                release = functools.partial(self._release_orphan, institution, rid, pkeys, lkeys)
                fut.add_done_callback(release)
                raise
            status = _text(reply[0])
            if status == "OK":
                nodes = prep.nodes(user)
                remaining: dict[Metric, Remaining | None] = {}
                for m, at in zip(METRICS, (5, 7), strict=True):
                    idx, left = int(reply[at]), int(reply[at + 1])
                    remaining[m] = None if left < 0 else Remaining(nodes[idx], left)
                return Reservation(
                    id=rid,
                    institution=institution,
                    unit=unit,
                    user=user,
                    request_id=request_id,
                    output_tokens=int(reply[1]),
                    clamped=bool(int(reply[2])),
                    reserved_cost=int(reply[3]),
                    reserved_tokens=int(reply[4]),
                    remaining=remaining,
                    price_in=price_in,
                    price_out=price_out,
                    created_at=_dt(now_ms),
                    deadline=_dt(int(reply[9])),
                    path=nodes,
                    period_keys=prep.period_keys(),
                    pkeys=pkeys,
                    packed_path=prep.unit_packed,
                    path_nargs=prep.unit_nargs,
                    rate=_rate(reply, 10, quiet=True),
                    lkeys=lkeys,
                    limited=seg is not None,
                )
            if status == "REFUSED":
                refusal = self._refusal(snap, prep.nodes(user), prep, reply, unit, user, request_id)
                rate = _rate(reply, 5, quiet=True) if seg is not None else None
                return refusal if rate is None else dataclasses.replace(refusal, rate=rate)
            if status == "LIMITED" and seg is not None:
                return _limit_refusal(institution, unit, user, request_id, seg, reply)
            if status == "CONTRACT" and seg is not None:
                return _contract_refusal(institution, unit, user, request_id, seg, reply)
            if status == "STALE":
                self.invalidate(institution)
                continue
            if status == "NOINST":
                await self._recover(institution)
                continue
            raise RuntimeError(f"reserve: unexpected reply {reply!r}")
        raise RuntimeError(f"reserve: institution {institution} kept changing while reserving")

    def _refusal(
        self,
        snap: Snapshot,
        nodes: tuple[str, ...],
        prep: Any,
        reply: list[Any],
        unit: str,
        user: str,
        request_id: str,
    ) -> Refusal:
        idx = int(reply[2])
        is_member = idx == 0
        bunit = unit if is_member else nodes[idx]
        window = prep.windows[0] if is_member else prep.windows[idx - 1]
        info = snap.units[bunit]
        return Refusal(
            institution=snap.institution,
            unit=unit,
            user=user,
            request_id=request_id,
            binding_node=nodes[idx],
            binding_unit=bunit,
            binding_name=f"member cap of {info.name}" if is_member else info.name,
            is_member_cap=is_member,
            metric=_CODE[_text(reply[1])],
            needed=int(reply[3]),
            available=int(reply[4]),
            resets_at=window.end,
        )

    async def settle(
        self,
        reservation: Reservation,
        input_tokens: int,
        output_tokens: int,
        *,
        cost: int | None = None,
        served: tuple[str, str] | None = None,
    ) -> Settlement:
        """Charge the provider's reported usage and drop the hold (stream or not, disconnect or not).

        `cost` is the caller's own figure when the reservation's prices are not the ones to charge: the
        gateway reserves at the dearest price of a fallback chain and charges at the price of the
        deployment that actually served (cached-input discounts included). `served`: (provider, model)
        that answered; the hold's other providers and models get their request and tokens back and
        their contracts are not charged (None: every one held is charged, the safe side)."""
        _check_ints(input_tokens=input_tokens, output_tokens=output_tokens)
        r = reservation
        if cost is None:
            cost = cost_of(input_tokens, output_tokens, r.price_in, r.price_out)
        elif cost < 0:
            raise ValueError("cost must be >= 0")
        tokens = input_tokens + output_tokens
        if input_tokens * r.price_in + output_tokens * r.price_out > MAX_EXACT or tokens > MAX_EXACT:
            raise ValueError("usage too large to compute exactly")
        head = _S + bulks((r.id, cost, tokens, "" if served is None else f"{served[0]}|{served[1]}"))
        head += self._limit_now()
        reply = await self._op(
            r.institution, 6, head, r.pkeys, r.packed_path, r.path_nargs, r.path[0], r.lkeys
        )
        status = _text(reply[0])
        actual: dict[Metric, int] = {"cost": cost, "tokens": tokens}
        if status in ("GONE", "LATE"):
            # GONE: unknown here (settled before, or Redis lost it): nothing charged, the usage unfunded.
            # LATE: the sweeper billed the whole hold on expiry (exactly what was reserved) and its usage event
            # says so; what was served above the hold is charged to no counter and reported as overage.
            none: dict[Metric, int] = {"cost": 0, "tokens": 0}
            if status == "GONE":
                over = actual
            else:
                over = {"cost": max(0, cost - r.reserved_cost), "tokens": max(0, tokens - r.reserved_tokens)}
            return Settlement(r.id, r.request_id, status.lower(), cost, tokens, none, over, None)
        pos = 1
        alloc: dict[Metric, int] = {}
        funded: dict[Metric, int] = {}
        extras: dict[Metric, tuple[ExtraTake, ...]] = {}
        for m in METRICS:
            alloc[m], funded[m], n = int(reply[pos]), int(reply[pos + 1]), int(reply[pos + 2])
            pos += 3
            taken = []
            for _ in range(n):
                taken.append((_text(reply[pos]), int(reply[pos + 1]), int(reply[pos + 2])))
                pos += 3
            extras[m] = tuple(taken)
        contracts: list[tuple[str, str, int]] = []
        if pos < len(reply):  # a hold with limits: the contract cells charged
            for _ in range(int(reply[pos])):
                contracts.append((_text(reply[pos + 1]), _text(reply[pos + 2]), int(reply[pos + 3])))
                pos += 3
        charge = Charge(r.institution, r.path, r.period_keys, alloc, extras, tuple(contracts))
        return Settlement(
            reservation_id=r.id,
            request_id=r.request_id,
            status="settled",
            cost=cost,
            tokens=tokens,
            charged=funded,
            overage={m: actual[m] - funded[m] for m in METRICS},
            charge=charge,
        )

    async def renew(self, reservations: Iterable[Reservation]) -> int:
        """Move the deadline of live holds to now + TTL (a long stream's lease; Redis's clock); returns how
        many were still held. Holds already settled, released or expired are left alone."""
        deadline = self._lease_at(int(self.reservation_ttl * 1000))
        lease_at = self._limit_lease_at()
        futs = [
            self._submit(r.institution, 4, b"".join((_N, bulk(r.id), deadline, lease_at)), (), lkeys=r.lkeys)
            for r in reservations
        ]
        replies = await asyncio.gather(*futs)
        return sum(1 for reply in replies if _text(reply[0]) == "RENEWED")

    async def release(self, reservation: Reservation) -> str:
        """Undo a reservation without charging: 'released', 'expired' (already swept) or 'gone'."""
        r = reservation
        head = _L + bulk(r.id) + self._limit_now()
        reply = await self._op(r.institution, 3, head, r.pkeys, None, 0, "", r.lkeys)
        return _text(reply[0]).lower()

    # --- sweeper -----------------------------------------------------------------------

    async def institutions(self) -> list[str]:
        return sorted(_text(x) for x in await self.redis.smembers(keys.INSTITUTIONS))

    async def sweep(self, institution: str | None = None, *, batch: int = 500) -> int:
        """Bill reservations past their deadline (Redis's clock); returns how many. Safe on many replicas at
        once; the script checks each deadline again against its own reading of the clock."""
        now_ms = await self._lease_now_ms()
        at = self._lease_at(0)
        insts = [institution] if institution is not None else await self.institutions()
        total = 0
        for inst in insts:
            dl, xp, rs = keys.deadlines(inst), keys.expired(inst), keys.records(inst)
            while True:
                rids: list[Any] = await self.redis.zrangebyscore(dl, "-inf", now_ms, start=0, num=batch)
                ops = []
                for rid, rec in zip(rids, await self.redis.hmget(rs, rids) if rids else [], strict=True):
                    if rec is None:
                        continue  # settled or released since the range read
                    pkeys, lkeys = _record_keys(inst, _text(rec))
                    ops.append(self._op(inst, 3, b"".join((_X, bulk(rid), at)), pkeys, None, 0, "", lkeys))
                replies = await asyncio.gather(*ops)
                total += sum(1 for r in replies if _text(r[0]) == "EXPIRED")
                if len(rids) < batch:
                    break
            await self.redis.zremrangebyscore(xp, "-inf", now_ms - int(self.expired_retention * 1000))
            await self._prune_settle_replies(inst)
        return total

    async def _prune_settle_replies(self, inst: str, batch: int = 1000) -> None:
        """Forget settle replies older than ``settled_retention`` (by Redis's clock: they were kept by it)."""
        sec, usec = await self.redis.time()
        cutoff = int(sec) * 1000 + int(usec) // 1000 - int(self.settled_retention * 1000)
        st, sr = keys.settle_times(inst), keys.settle_replies(inst)
        while old := await self.redis.zrangebyscore(st, "-inf", cutoff, start=0, num=batch):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(sr, *old)
                pipe.zrem(st, *old)
                await pipe.execute()
            if len(old) < batch:
                break

    async def drain_unsettled(
        self,
        institution: str,
        handle: Callable[[UnsettledHold], None],
        *,
        batch: int = 100,
        handed_over: Callable[[], Awaitable[bool]] | None = None,
        on_poison: Callable[[str, Exception], None] | None = None,
    ) -> int:
        """Hand every hold the sweeper billed on expiry to ``handle`` (which writes its usage event), at least
        once; returns how many were handed over.

        Reliable: a round claims entries (lua/unsettled.lua) rather than popping them, and removes them only
        once ``handed_over()`` says the events ``handle`` wrote are with the usage pipeline (Kafka or its
        spool). A process that dies in between leaves claims that any replica takes again when they are
        ``unsettled_lease`` old; the event id the gateway derives from the hold makes the repeat one ledger
        row. An entry that cannot be billed (malformed; ``handle`` raising ValueError, TypeError, KeyError
        or IndexError) goes to the dead-letter list ``un:dead`` and is logged (and passed to ``on_poison``):
        it never blocks the others. Any other error from ``handle`` (the pipeline away) ends the round; the
        entries not handed over are claimed again at once by the next one."""
        names = [keys.unsettled(institution), keys.unsettled_claimed(institution)]
        dead_key = keys.unsettled_dead(institution)
        lease_ms = int(self.unsettled_lease * 1000)
        done = 0
        while True:
            claimed = [_text(x) for x in await scripts.run(self.redis, "unsettled", names, [batch, lease_ms])]
            if not claimed:
                return done
            handled: list[str] = []
            dead: list[str] = []
            failure: Exception | None = None
            for raw in claimed:
                try:
                    hold = _unsettled(institution, raw)
                    handle(hold)
                except _POISON as err:
                    dead.append(raw)
                    log.error("unsettled entry of %s cannot be billed (%s); moved to %s: %.200r",
                              institution, err, dead_key, raw)  # fmt: skip
                    if on_poison is not None:
                        on_poison(institution, err)
                    continue
                except Exception as err:
                    failure = err
                    break
                handled.append(raw)
            if dead:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.rpush(dead_key, *dead)
                    pipe.zrem(names[1], *dead)
                    await pipe.execute()
            rest = claimed[len(handled) + len(dead) :]
            if rest:  # not handed over: the next round (here or elsewhere) takes them again at once
                await self.redis.zadd(names[1], dict.fromkeys(rest, 0), xx=True)
            if handled and (handed_over is None or await handed_over()):
                await self.redis.zrem(names[1], *handled)
                done += len(handled)
            elif handled:  # the pipeline did not confirm: their claims lapse and they are written again
                log.warning("usage events of %d unsettled holds of %s not confirmed by the pipeline; "
                            "they will be written again", len(handled), institution)  # fmt: skip
                return done
            if failure is not None:
                raise failure
            if len(claimed) < batch:
                return done

    async def prune(self, institution: str, *, now: float | None = None) -> int:
        """Drop counter hashes of periods that ended more than ``counter_retention`` ago."""
        now_ms = self._now_ms(now)
        snap = await self.snapshot(institution)
        old = []
        for name in await self.redis.smembers(keys.registry(institution)):
            name = _text(name)
            w = window_for_key(keys.period_key_of(name), snap.calendar)
            if w.end is not None and w.end.timestamp() * 1000 + self.counter_retention * 1000 < now_ms:
                old.append(name)
        if old:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*old)
                pipe.srem(keys.registry(institution), *old)
                await pipe.execute()
        return len(old)

    async def run_sweeper(
        self,
        interval: float = 1.0,
        prune_every: float = 3600.0,
        institutions: Iterable[str] | None = None,
        on_unsettled: Callable[[UnsettledHold], None] | None = None,
    ) -> None:
        """Sweep every ``interval`` seconds until cancelled; prune old periods now and then.

        ``institutions`` limits it to those (default: every institution ever compiled here). With
        ``on_unsettled``, the holds billed on expiry are handed to it (:meth:`drain_unsettled`); a
        process that cannot write usage events passes none and leaves them to one that can.
        """
        only = None if institutions is None else list(institutions)
        last_prune = time.monotonic()
        while True:
            try:
                for inst in only if only is not None else [None]:
                    await self.sweep(inst)
                if on_unsettled is not None:
                    for inst in only if only is not None else await self.institutions():
                        await self.drain_unsettled(inst, on_unsettled)
                if time.monotonic() - last_prune > prune_every:
                    last_prune = time.monotonic()
                    for inst in only if only is not None else await self.institutions():
                        with contextlib.suppress(InstitutionNotLoaded):
                            await self.prune(inst)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis briefly away: try again next round
                log.exception("quota sweeper round failed")
            await asyncio.sleep(interval)

    # --- control plane -----------------------------------------------------------------

    async def compile(
        self, spec: InstitutionSpec, changed: Iterable[str] | None = None, *, existing: bool = False
    ) -> str:
        """Apply a budget edit: recompile (all, or the subtrees of ``changed`` units) and publish. With
        ``existing``, raise InstitutionNotLoaded if Redis does not hold the institution compiled (lost,
        or disowned by the epoch check since the caller looked): the caller rebuilds from the ledger."""
        token = await install(self.redis, spec, changed, existing=existing)
        self.invalidate(spec.id)
        if token is None:
            raise InstitutionNotLoaded(spec.id)
        return token

    async def listen_invalidations(self, ready: asyncio.Event | None = None) -> None:
        """Drop cached snapshots when another replica compiles; run as a task, cancel to stop."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(keys.INVALIDATION_CHANNEL)
        if ready is not None:
            ready.set()
        try:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None or msg.get("type") != "message":
                    continue
                inst, _, token = _text(msg["data"]).partition(" ")
                snap = self._snaps.get(inst)
                if snap is not None and snap.token != token:
                    self.invalidate(inst)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
                await pubsub.aclose()

    async def rebuild(self, spec: InstitutionSpec, counters: CounterValues, *, force: bool = False) -> bool:
        """Write compiled caps and ledger counters atomically. Without ``force`` only if not compiled.

        Returns True if this call wrote, False if the institution was already
        compiled (another replica rebuilt first).
        """
        compiled = compile_spec(spec)
        units, extras = counters.of(spec.id)
        per_key: dict[str, dict[str, list[int]]] = {}
        for (pkey, node, m), v in units.items():
            per_key.setdefault(keys.counters(spec.id, pkey), {}).setdefault(node, [0, 0])[
                METRICS.index(m)
            ] = v
        per_extra: dict[str, list[int]] = {}
        for (x, m), v in extras.items():
            per_extra.setdefault(x, [0, 0])[METRICS.index(m)] = v
        await self.redis.sadd(keys.INSTITUTIONS, spec.id)  # first: see install()
        fields = {**compiled.fields, "rid": await server_run_id(self.redis)}  # as install() records it
        for _ in range(5):
            registered = {_text(k) for k in await self.redis.smembers(keys.registry(spec.id))}
            names = sorted(registered | set(per_key))
            token = new_token()
            args: list[Any] = ["1" if force else "0", token, compiled.snapshot, len(fields)]
            for field_name, value in fields.items():
                args += [field_name, value]
            for name in names:
                triples = per_key.get(name, {})
                args.append(len(triples))
                for node, (c, t) in sorted(triples.items()):
                    args += [node, c, t]
            args.append(len(per_extra))
            for x, (c, t) in sorted(per_extra.items()):
                args += [x, c, t]
            key_names = [keys.cfg(spec.id), keys.extras(spec.id), keys.registry(spec.id), *names]
            result = _text(await scripts.run(self.redis, "rebuild", key_names, args))
            if result == "RETRY":
                continue
            self.invalidate(spec.id)
            if result == "OK":
                await self.redis.publish(keys.INVALIDATION_CHANNEL, f"{spec.id} {token}")
            return result == "OK"
        raise RuntimeError(f"rebuild of {spec.id}: counter hashes kept appearing")

    async def redis_counters(
        self, institution: str
    ) -> tuple[
        dict[tuple[str, str, Metric], int], dict[tuple[str, str, Metric], int], dict[tuple[str, Metric], int]
    ]:
        """Spend (up), holds (res) and extras used as Redis holds them, read in one MULTI."""
        names = sorted(_text(k) for k in await self.redis.smembers(keys.registry(institution)))
        async with self.redis.pipeline(transaction=True) as pipe:
            for name in names:
                pipe.hgetall(name)
            pipe.hgetall(keys.extras(institution))
            replies = await pipe.execute()
        up: dict[tuple[str, str, Metric], int] = {}
        res: dict[tuple[str, str, Metric], int] = {}
        for name, fields in zip(names, replies[:-1], strict=True):
            pkey = keys.period_key_of(name)
            for f, v in fields.items():
                node = _text(f)
                if node == "_":
                    continue
                cu, cr, tu, tr = keys.unpack_counters(v)
                up[(pkey, node, "cost")], res[(pkey, node, "cost")] = cu, cr
                up[(pkey, node, "tokens")], res[(pkey, node, "tokens")] = tu, tr
        used: dict[tuple[str, Metric], int] = {}
        for f, v in replies[-1].items():
            cu, _, tu, _ = keys.unpack_counters(v)
            used[(_text(f), "cost")], used[(_text(f), "tokens")] = cu, tu
        return up, res, used

    async def drift(
        self,
        institution: str,
        counters: CounterValues,
        covers_unit: Callable[[str], bool] = lambda period_key: True,
        covers_extra: Callable[[str], bool] = lambda extra_id: True,
    ) -> list[Drift]:
        """Where Redis's spend counters differ from the ledger's (empty list: in agreement), among those the
        ledger read covered (quota.sources.LedgerScope: open periods, grants still valid)."""
        up, _, used = await self.redis_counters(institution)
        units, extras = counters.of(institution)
        return compare(up, used, units, extras, covers_unit, covers_extra)

    # --- explain -----------------------------------------------------------------------

    async def explain(
        self, institution: str, unit: str, user: str, *, now: float | None = None
    ) -> Explanation:
        now_ms = self._now_ms(now)
        snap = await self.snapshot(institution)
        prep = snap.prepared(unit, now_ms)
        nodes = prep.nodes(user)
        fields = cap_fields(snap, prep)
        extra_ids = [x.id for u in prep.units for x in snap.units[u].extras]
        counter_keys = [keys.counters(institution, k) for k in prep.period_keys()]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.cfg(institution), fields)
            for node, key in zip(nodes, counter_keys, strict=True):
                pipe.hget(key, node)
            if extra_ids:
                pipe.hmget(keys.extras(institution), extra_ids)
            replies = await pipe.execute()
        caps = {f: keys.unpack_caps(v) for f, v in zip(fields, replies[0], strict=True)}
        counters = {
            node: keys.unpack_counters(v) for node, v in zip(nodes, replies[1 : 1 + len(nodes)], strict=True)
        }
        xcounters = {}
        if extra_ids:
            xcounters = {x: keys.unpack_counters(v) for x, v in zip(extra_ids, replies[-1], strict=True)}
        return build(snap, prep, user, _dt(now_ms), caps, counters, xcounters)


def _limit_line(line: str) -> tuple[list[tuple[str, bool, bool]], list[tuple[str, str, int]]]:
    """Record line 4 (lua/ops.lua lim_take): the windows/leases (suffix, has window, has lease) and the
    contract holds (node, period key, held). Empty for a record without limits."""
    if not line.startswith("L\t"):
        return [], []
    f = line.split("\t")[1:]
    wins = [(f[at], f[at + 1] != "-", f[at + 2] == "1") for at in range(2, 2 + 3 * int(f[1]), 3)]
    at = 2 + 3 * int(f[1])
    cons = [(f[i], f[i + 1], int(f[i + 2])) for i in range(at + 1, at + 1 + 3 * int(f[at]), 3)]
    return wins, cons


def _record_keys(inst: str, rec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The counter hashes (period keys) and limit keys a hold record touches, to declare them."""
    lines = [*rec.split("\n", 3), "", ""]
    wins, cons = _limit_line(lines[3])
    pkeys = tuple(dict.fromkeys([*lines[1].split("\t")[0::2], *(p for _, p, _ in cons)]))
    lkeys = [keys.limit_window(inst, s) for s, w, _ in wins if w]
    lkeys += [keys.limit_leases(inst, s) for s, _, c in wins if c]
    return pkeys, tuple(lkeys)


def _rate(reply: list[Any], at: int, *, quiet: bool = False) -> RateInfo | None:
    """The six header numbers a limited op's reply carries from ``at`` (None: absent; with ``quiet``, also
    when neither a requests nor a tokens limit is on the path, so there is nothing to report)."""
    if len(reply) < at + 6:
        return None
    info = RateInfo._make(map(int, reply[at : at + 6]))
    if quiet and info.limit_requests < 0 and info.limit_tokens < 0:
        return None
    return info


def _limit_refusal(
    inst: str, unit: str, user: str, request_id: str, seg: LimitSegment, reply: list[Any]
) -> LimitRefusal:
    """{'LIMITED', what, node index, limit, needed, retry ms (-1: never), six header numbers}."""
    retry = int(reply[5])
    rate = _rate(reply, 6) or RateInfo(-1, -1, -1, -1, -1, -1)
    return LimitRefusal(
        institution=inst,
        unit=unit,
        user=user,
        request_id=request_id,
        node=seg.nodes[int(reply[2])],
        what=_text(reply[1]),
        limit=int(reply[3]),
        needed=int(reply[4]),
        retry_after_ms=None if retry < 0 else retry,
        rate=rate,
    )


def _contract_refusal(
    inst: str, unit: str, user: str, request_id: str, seg: LimitSegment, reply: list[Any]
) -> Refusal:
    """{'CONTRACT', contract index, cost needed, room, [six header numbers]}: the contract is committed."""
    at = int(reply[1])
    node = seg.contracts[at]
    return Refusal(
        institution=inst,
        unit=unit,
        user=user,
        request_id=request_id,
        binding_node=node,
        binding_unit="",
        binding_name=node[2:],
        is_member_cap=False,
        metric="cost",
        needed=int(reply[2]),
        available=int(reply[3]),
        resets_at=seg.contract_windows[at].end,
        kind="contract",
        rate=_rate(reply, 4, quiet=True),
    )


def _unsettled(institution: str, raw: str) -> UnsettledHold:
    """Parse an unsettled-list entry: ``<reservation id>\\n<record>`` as lua/ops.lua wrote it."""
    rid, holds_line, path_line, meta, lim_line = [*raw.split("\n", 4), "", ""][:5]
    words = holds_line.split()
    at = 0
    alloc: dict[Metric, int] = {}
    extras: dict[Metric, tuple[ExtraTake, ...]] = {}
    totals: dict[Metric, int] = {}
    for m in METRICS:
        alloc[m], n = int(words[at]), int(words[at + 1])
        at += 2
        takes = []
        for _ in range(n):
            takes.append((words[at], int(words[at + 1]) - 1, int(words[at + 2])))  # j: 1-based there
            at += 3
        extras[m] = tuple(takes)
        totals[m] = alloc[m] + sum(x for _, _, x in takes)
    parts = path_line.split("\t")
    _, cons = _limit_line(lim_line)
    charge = Charge(institution, tuple(parts[1::2]), tuple(parts[0::2]), alloc, extras, tuple(cons))
    return UnsettledHold(rid, charge, totals["cost"], totals["tokens"], meta)
