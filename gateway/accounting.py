"""The money path of one gateway process: reserve, renew, settle and record, once per request.

One owner, because every way a request can end must leave the counters and the ledger agreeing, and
none may make a served request free:

* **Settled.** The provider's usage is charged by the waterfall and the usage event carries the funding.
* **Settle fails** (Redis away or timing out, or the reply lost after the script ran): the settle is retried
  with backoff while the hold lives; Redis answers a repeat with the first settle's reply, so a lost reply
  charges nothing twice and never turns a funded request into overage.
  Once it succeeds the request is recorded as usual. If Redis stays away past the hold's deadline, the
  sweeper bills the hold when Redis is back, and the settle that finally gets through answers ``late``:
  this process then writes nothing, because the sweeper's event already bills the request.
* **The process dies** (SIGKILL, OOM, node loss) with requests in flight: their holds carry the usage
  event's skeleton (``skeleton``), so after the deadline any replica's sweeper bills each hold whole and
  writes its event (status ``unsettled``, the hold's tokens and cost: an upper bound of what was served);
  a gateway writes those of the institutions it serves only (:meth:`Accounting.run_billing`).
* **A long stream**: its hold's deadline is renewed every third of the TTL while it lives
  (:meth:`Accounting.run_leases`), so the sweeper never takes the room of a request still being served.
* **Settled before, or Redis lost the record** (``gone``): the usage is recorded with its cost as
  overage (unfunded), never as zero.

Only ``finish`` and ``release`` end a request; both forget its lease and give back its fair-queue slot
(if it holds one), and ``finish`` never raises (the answer has already gone to the client). Holds with
limits (concurrency leases) and slots are renewed every third of ``EDUAIQ_LIMIT_LEASE_SECONDS``, so a dead
process's requests stop counting against a concurrency limit or a model's slots within one lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import budget
from gateway.catalog import InstitutionView
from gateway.meter import Outcome
from gateway.observe import METRICS
from providers.prices import Price
from providers.usage import NormalisedUsage
from quota import QuotaEngine, Reservation, UnsettledHold
from quota.fairq import FairQueue, Slot

log = logging.getLogger(__name__)

Emit = Callable[[Outcome, str | None], None]  # (outcome, event id or None for a fresh one)
ChargebacksOf = Callable[[str], Mapping[str, str | None]]  # institution -> {extra id: chargeback code}

# Redis errors worth retrying a settle for: the script either did not run or its reply was lost. Any other
# error (a bug, a bound too large) would fail again; the hold then expires and the sweeper bills it.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
_FIRST_RETRY, _MAX_RETRY = 0.1, 2.0
_UNSETTLED_NS = uuid.UUID("6f1d7a52-3c1e-4f0a-9a55-0e2b8c1d4e77")
_HAND_OVER_WITHIN = 10.0  # seconds a drain round waits for its events to reach Kafka or the spool
_DEAD_UNSETTLED = Counter(
    "eduaiq_unsettled_dead_letters",
    "Unsettled-hold entries that could not be billed (malformed), moved to the dead-letter list",
    ["institution"],
    registry=METRICS.registry,
)


def skeleton(o: Outcome, input_bound: int) -> str:
    """What a usage event needs that only the gateway knows at reserve time, kept with the hold (one line
    of JSON) so the hold can be billed and recorded even if this process dies."""
    return orjson.dumps(
        {
            "r": o.request_id,
            "u": o.user_id,
            "k": o.key_id,
            "n": o.unit_id,
            "p": o.path,
            "d": o.kinds,
            "m": o.model_id,
            "t": o.started_wall.timestamp(),
            "i": input_bound,
            "g": o.image_tokens,
        }
    ).decode()


def unsettled_outcome(
    hold: UnsettledHold, institution: str, chargebacks: Mapping[str, str | None]
) -> Outcome:
    """The usage event of a hold billed on expiry: the hold's tokens (prompt bound first) and cost, funded
    exactly as the sweeper charged them."""
    meta: dict[str, Any] = orjson.loads(hold.meta) if hold.meta else {}
    bound = int(meta.get("i") or 0)
    o = Outcome(
        request_id=str(meta.get("r") or f"req_unsettled_{hold.reservation_id}"),
        institution_id=institution,
        status="unsettled",
        user_id=meta.get("u"),
        key_id=meta.get("k"),
        unit_id=meta.get("n"),
        path=list(meta.get("p") or []),
        kinds=list(meta.get("d") or []),
        model_id=meta.get("m"),
        image_tokens=int(meta.get("g") or 0),
    )
    if "t" in meta:
        o.started_wall = datetime.fromtimestamp(float(meta["t"]), UTC)
    o.input_tokens = min(bound, hold.tokens)
    o.output_tokens = hold.tokens - o.input_tokens
    o.cost_micro = hold.cost
    budget.record_charge(o, hold.charge, chargebacks)
    return o


class Accounting:
    def __init__(
        self,
        quota: QuotaEngine,
        emit: Emit,
        chargebacks_of: ChargebacksOf,
        flush: Callable[[float], Awaitable[bool]] | None = None,
        *,
        lease: float = 30.0,
        fair_queue: FairQueue | None = None,
    ) -> None:
        """``flush(seconds)``: wait until every event emitted so far is with Kafka or the spool (False if
        not within that time); the unsettled holds' entries leave Redis only after it said True.
        ``lease``: seconds of a concurrency lease or a slot (renewed every third of it)."""
        self.quota = quota
        self._emit = emit
        self._flush = flush
        self._chargebacks_of = chargebacks_of
        self._lease = lease
        self._fair_queue = fair_queue
        self._live: dict[str, Reservation] = {}  # the holds this process must keep alive (leases)
        self._slots: dict[str, Slot] = {}  # reservation id -> the model slot its request holds
        self._settling = 0  # settles in progress (each followed by its usage event)
        self._none_settling = asyncio.Event()
        self._none_settling.set()
        self._stopped = False  # shutdown past the usage hand-over: no more settles

    async def stop_settling(self) -> None:
        """At shutdown, before the usage pipeline closes: from now on a request that ends leaves its hold
        (after its deadline the sweeper bills it and writes the event); then wait for the settles in
        progress to have written theirs. A settle after the pipeline closed charged the counters and
        dropped its event: a served request missing from the ledger. The caller bounds the wait."""
        self._stopped = True
        await self._none_settling.wait()

    @property
    def live(self) -> int:
        return len(self._live)

    async def reserve(
        self,
        view: InstitutionView,
        o: Outcome,
        *,
        input_bound: int,
        max_output: int,
        price: Price,
        scopes: tuple[tuple[str, str], ...] = (),
    ) -> Reservation:
        """Hold the request's bound (or raise the 429) and keep the hold alive until `finish`/`release`."""
        r = await budget.reserve(
            self.quota, view, o, input_bound=input_bound, max_output=max_output, price=price,
            meta=skeleton(o, input_bound), scopes=scopes,
        )  # fmt: skip
        self._live[r.id] = r
        return r

    def hold_slot(self, r: Reservation, slot: Slot) -> None:
        """The request got a model slot: renewed with its hold, given back by `finish`/`release`."""
        self._slots[r.id] = slot

    async def _free_slot(self, r: Reservation) -> None:
        slot = self._slots.pop(r.id, None)
        if slot is None or self._fair_queue is None:
            return
        try:
            await self._fair_queue.release(slot)
        except Exception:  # its lease runs out and the next request in the queue gets it
            log.warning("could not give back the slot of %s", r.id, exc_info=True)

    async def release(self, r: Reservation) -> None:
        """Nothing was served (the model refused or failed before answering): give the hold back."""
        self._live.pop(r.id, None)
        await self._free_slot(r)
        try:
            await self.quota.release(r)
        except Exception:  # the hold expires; it is then billed, conservatively, by the sweeper
            log.exception("could not release reservation %s", r.id)

    async def finish(
        self,
        view: InstitutionView,
        r: Reservation,
        o: Outcome,
        usage: NormalisedUsage,
        price: Price,
        served: tuple[str, str] | None = None,
    ) -> None:
        """Charge what the provider served and record it, exactly once; never raises. ``served``: the
        (provider, model) that answered, whose contract and limits keep the charge."""
        await self._free_slot(r)  # the model is done with it: the next request in its queue may start
        if self._stopped:
            self._live.pop(r.id, None)
            log.error("%s ended after the usage hand-over at shutdown; its hold will be billed when it expires",
                      o.request_id)  # fmt: skip
            return
        # Counted while its settle is awaited; the event is written right after, in the same step of the
        # event loop, so stop_settling() cannot return between the two.
        self._settling += 1
        self._none_settling.clear()
        try:
            o.image_tokens = max(o.image_tokens, usage.image)
            o.cached_tokens = usage.cached_input
            s = await self._settle(view, r, o, usage, price, served if r.limited else None)
        except Exception:
            # Not free: the hold stays in Redis, and after its deadline the sweeper bills it and writes
            # the event. Writing one here too would bill the request twice.
            log.exception("settle of %s failed; its hold will be billed when it expires", o.request_id)
            return
        finally:
            self._live.pop(r.id, None)
            self._settling -= 1
            if not self._settling:
                self._none_settling.set()
        if s.status == "late":
            log.warning("%s settled after its hold expired: billed at the hold by the sweeper", o.request_id)
            if s.overage["cost"] or s.overage["tokens"]:
                self._record_above_hold(r, o, usage, s.overage)
            return
        if s.status == "gone":
            log.warning("%s: its hold was unknown to Redis; recorded as unfunded overage", o.request_id)
        METRICS.settled(usage.input, usage.output)
        self.record(o)

    async def _settle(
        self,
        view: InstitutionView,
        r: Reservation,
        o: Outcome,
        usage: NormalisedUsage,
        price: Price,
        served: tuple[str, str] | None,
    ) -> Any:
        """Settle, retrying while Redis is unreachable: for as long as the hold can live (its TTL past the
        last known deadline), after which the sweeper has billed it and a settle would answer `late`."""
        delay = _FIRST_RETRY
        give_up = time.monotonic() + 2 * self.quota.reservation_ttl
        while True:
            try:
                return await budget.settle(self.quota, view, r, o, usage, price, served)
            except _TRANSIENT:
                if time.monotonic() + delay > give_up:
                    raise
                log.warning("settle of %s: Redis unreachable; retrying in %.1f s", o.request_id, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)

    def _record_above_hold(
        self, r: Reservation, o: Outcome, usage: NormalisedUsage, above: Mapping[str, int]
    ) -> None:
        """A late settle served more than the hold the sweeper billed (the provider overran the granted output):
        the difference goes to the ledger as a correction row of the request, status ``unsettled`` like the
        sweeper's, unfunded (overage), so the ledger has every served token. Its event id comes from the hold:
        a repeat is one row."""
        out_above = min(above["tokens"], max(0, usage.output - r.output_tokens))
        o.status = "unsettled"
        o.input_tokens, o.output_tokens = above["tokens"] - out_above, out_above
        o.cost_micro = o.overage_micro = above["cost"]
        o.funding, o.extras_paid = {}, []
        log.warning("%s: %d tokens above its expired hold recorded as overage", o.request_id, above["tokens"])
        self.record(o, str(uuid.uuid5(_UNSETTLED_NS, f"{r.institution}/{r.id}/above-hold")))

    def record(self, o: Outcome, event_id: str | None = None) -> None:
        """Hand a request's usage event to the pipeline; never raises (also for requests that ended before
        anything was served: refused, invalid, upstream down)."""
        try:
            self._emit(o, event_id)
        except Exception:
            log.exception("could not record usage event %s", o.request_id)

    def bill_unsettled(self, hold: UnsettledHold) -> None:
        """The sweeper's hand-over: write the usage event of a hold billed on expiry. Its event id comes
        from the hold, so a hand-over repeated after a crash (the entry is claimed again once its claim
        lapses, quota.QuotaEngine.drain_unsettled) is one ledger row."""
        o = unsettled_outcome(hold, hold.charge.institution, self._chargebacks_of(hold.charge.institution))
        self._emit(o, str(uuid.uuid5(_UNSETTLED_NS, f"{hold.charge.institution}/{hold.reservation_id}")))
        log.warning("billed unsettled hold %s of %s at its bound", hold.reservation_id, o.request_id)

    async def run_billing(self, institutions: Callable[[], Iterable[str]], every: float = 1.0) -> None:
        """Write the usage events of the holds the sweepers billed on expiry, for the institutions this
        process serves only: their events belong in this deployment's topic and ledger, and a Redis shared
        by several deployments holds other institutions' too."""
        while True:
            await asyncio.sleep(every)
            for inst in institutions():
                try:
                    await self.quota.drain_unsettled(
                        inst, self.bill_unsettled, handed_over=self._handed_over, on_poison=self._poison
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:  # Redis away, or an entry that cannot be written: the next round retries
                    log.warning("could not bill the unsettled holds of %s", inst, exc_info=True)

    async def _handed_over(self) -> bool:
        return self._flush is None or await self._flush(_HAND_OVER_WITHIN)

    @staticmethod
    def _poison(institution: str, err: Exception) -> None:
        _DEAD_UNSETTLED.labels(institution).inc()

    async def run_leases(self) -> None:
        """Renew every live hold each third of the TTL, so only a dead process's holds ever expire; holds with
        limits (their concurrency leases) and model slots each third of the (shorter) limit lease."""
        ttl_every = self.quota.reservation_ttl / 3
        every = min(self.quota.reservation_ttl, self._lease) / 3
        next_all = time.monotonic() + ttl_every
        while True:
            await asyncio.sleep(every)
            whole = time.monotonic() >= next_all
            if whole:
                next_all = time.monotonic() + ttl_every
            live = [r for r in self._live.values() if whole or r.limited]
            slots = list(self._slots.values())
            try:
                if live:
                    await self.quota.renew(live)
                if slots and self._fair_queue is not None:
                    await self._fair_queue.renew(slots)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the next round tries again, well before the deadline
                log.warning("could not renew %d holds and %d slots", len(live), len(slots), exc_info=True)
