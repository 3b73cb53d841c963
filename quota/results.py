"""What the engine hands back: reservations, refusals, settlements and ledger charges.

A :class:`Charge` is the exact record of what one settled request took from
which counters. The gateway puts it in the usage event; the ledger stores it;
:func:`quota.rebuild.recompute_counters` turns a ledger of them back into
counter values. That is why it names node ids and period keys rather than
units and dates: it must replay into the same Redis fields whatever the tree
looks like later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from quota.model import Metric

ExtraTake = tuple[str, int, int]  # (extra_id, node index j on the path, amount)


@dataclass(frozen=True, slots=True)
class Charge:
    """One settled request as counters saw it (input of the ledger rebuild)."""

    institution: str
    path: tuple[str, ...]  # node ids, member node first, root last
    period_keys: tuple[str, ...]  # one per node
    allocation: Mapping[Metric, int]  # added to `up` of every node
    extras: Mapping[Metric, tuple[ExtraTake, ...]]  # added to `up` of nodes below j and to the extra
    # Contract spend: (contract node c:..., period key, cost) added to that cell's cost `up`.
    contracts: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Remaining:
    """After a reservation: the node that limits what is left on the path, and how much is left."""

    node: str
    room: int


class RateInfo(NamedTuple):
    """The tightest limits on the path after this request (OpenAI's x-ratelimit-* trios); -1: no such limit.

    Requests and tokens are reported for the node with the least left (ties: the nearest node); a reset is
    the milliseconds until the oldest counted second leaves that node's window. A named tuple: built for
    every limited request, where a frozen dataclass cost 5 µs.
    """

    limit_requests: int
    remaining_requests: int
    reset_requests_ms: int
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_ms: int


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    institution: str
    unit: str
    user: str
    request_id: str
    output_tokens: int  # granted max_tokens (== asked unless clamped)
    clamped: bool
    reserved_cost: int
    reserved_tokens: int
    remaining: Mapping[Metric, Remaining | None]  # None: nothing on the path caps that metric
    price_in: int
    price_out: int
    created_at: datetime
    deadline: datetime
    path: tuple[str, ...]
    period_keys: tuple[str, ...]
    # Opaque to callers: the prepared unit path (RESP-encoded) settle sends again.
    pkeys: tuple[str, ...] = field(repr=False, default=())
    packed_path: bytes = field(repr=False, default=b"")
    path_nargs: int = field(repr=False, default=0)
    rate: RateInfo | None = None  # None: no limit on the path (no headers to send)
    # Limit keys the hold touches (settle declares them).
    lkeys: tuple[str, ...] = field(repr=False, default=())
    limited: bool = False  # the hold carries limits or contract holds (its record has a limit line)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request cannot be funded; the data behind the 429 message."""

    institution: str
    unit: str
    user: str
    request_id: str
    binding_node: str  # unit id, or member(user,unit)
    binding_unit: str  # the unit (for a member node: the unit whose member cap binds)
    binding_name: str
    is_member_cap: bool
    metric: Metric
    needed: int
    available: int
    resets_at: datetime | None  # None: the binding period never resets (period none)
    # "budget", or "contract" (binding_node = c:<provider>[|<model>], binding_unit = "", resets_at = the
    # end of the contract's window).
    kind: str = "budget"
    rate: RateInfo | None = None  # the path's rate limits (headers), when it has any


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    """A rate, token or concurrency limit on the path is full; the data behind the 429 rate_limit_exceeded."""

    institution: str
    unit: str
    user: str
    request_id: str
    node: str  # limit node id: u:<unit>, m:<unit>, p:<provider>, pm:<provider>|<model>
    what: str  # "requests" | "tokens" | "concurrent"
    limit: int
    needed: int  # requests (1) or tokens this request needs counted
    retry_after_ms: int | None  # None: the request can never fit (its token bound is above the limit)
    rate: RateInfo


@dataclass(frozen=True, slots=True)
class Settlement:
    reservation_id: str
    request_id: str
    status: str  # 'settled' | 'late' (expiry had billed the hold: nothing more) | 'gone' (unknown: nothing)
    cost: int  # actual cost of the usage (micro-units)
    tokens: int
    charged: Mapping[Metric, int]  # what the counters took
    overage: Mapping[Metric, int]  # actual - charged: unfunded, for the ledger
    charge: Charge | None  # None when status is 'late' or 'gone'


@dataclass(frozen=True, slots=True)
class UnsettledHold:
    """A hold the sweeper billed because nobody settled it by its deadline (its gateway died, or could
    not reach Redis for a whole TTL): what it took from the counters, and the usage-event skeleton the
    gateway stored with it, so its ledger row can still be written."""

    reservation_id: str
    charge: Charge
    cost: int  # micro-units billed (the hold's whole cost bound)
    tokens: int  # tokens billed (prompt bound + granted output)
    meta: str  # as the gateway passed it to reserve (opaque to quota/)
