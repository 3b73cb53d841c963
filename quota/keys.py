"""Every Redis name the engine uses, in one place.

All keys of an institution carry the hash tag ``{<institution>}`` so they
share one Cluster slot: each script runs on the node that owns that slot and
every key it touches is declared in KEYS (the sweeper and rebuild read the
names they need first, then declare them). Fields inside the hashes:

``eq:{I}:cfg`` (compiled caps, read on every request)
    ``ver`` compile token (its absence means "not compiled": rebuild first),
    ``snap`` JSON snapshot for the Python side, and one field per cap holder:
    ``=<unit>`` (a unit), ``@<unit>`` (the member nodes of a unit), ``$<extra>``
    (an extra's amount), each ``"<cost> <tokens>"`` with ``-`` for inherit / none.
``eq:{I}:k:<period key>`` (counters of one period window)
    one field per node id: ``"<cost up> <cost reserved> <tokens up> <tokens
    reserved>"``; ``_`` marks a hash already registered in ``pk``. Four numbers in
    one field because every request reads and writes all four of each node:
    one hash field per node keeps the scripts' Redis calls and string work small.
``eq:{I}:xc`` extras counters, one field per extra id, same four numbers
    (used instead of up; not per period: an extra has a validity window).
``eq:{I}:pk`` set of counter hash names (rebuild, drift, prune).
``eq:{I}:dl`` sorted set: pending reservation ids scored by deadline (ms).
``eq:{I}:rs`` hash: pending reservation id -> record of exactly what it holds.
``eq:{I}:xp`` sorted set: ids the sweeper expired, scored by expiry time, so a
    late settle charges nothing more (expiry billed the hold) and a second settle is refused.
``eq:{I}:un`` list: records of holds the sweeper billed on expiry (``<id>\n<record>``), waiting for a
    gateway's sweeper to write their usage events (:meth:`QuotaEngine.drain_unsettled`).
``eq:{I}:un:claimed`` sorted set: entries a drain round took from ``un`` and has not yet seen handed to the
    usage pipeline, scored by the end of the claim (ms, Redis's clock); a stale claim is taken again.
``eq:{I}:sr`` hash: reservation id -> the reply of its settle (OK or LATE), so a settle repeated after a lost
    reply gets the same answer; ``eq:{I}:st`` sorted set: when each was kept (ms, Redis's clock), pruned by the
    sweeper after ``settled_retention``.
``eq:{I}:un:dead`` list: entries that cannot be billed (malformed), set aside so they block nothing.
"""

from __future__ import annotations

INVALIDATION_CHANNEL = "eq:quota:invalidate"
INSTITUTIONS = "eq:quota:institutions"  # set of institution ids (the sweeper's work list; not slot-bound)


def prefix(inst: str) -> str:
    return f"eq:{{{inst}}}:"


def cfg(inst: str) -> str:
    return prefix(inst) + "cfg"


def counters(inst: str, period_key: str) -> str:
    return prefix(inst) + "k:" + period_key


def period_key_of(counter_key: str) -> str:
    return counter_key.split("}:k:", 1)[1]


def extras(inst: str) -> str:
    return prefix(inst) + "xc"


def registry(inst: str) -> str:
    return prefix(inst) + "pk"


def deadlines(inst: str) -> str:
    return prefix(inst) + "dl"


def expired(inst: str) -> str:
    return prefix(inst) + "xp"


def records(inst: str) -> str:
    return prefix(inst) + "rs"


def unsettled(inst: str) -> str:
    return prefix(inst) + "un"


def settle_replies(inst: str) -> str:
    return prefix(inst) + "sr"


def settle_times(inst: str) -> str:
    return prefix(inst) + "st"


def unsettled_claimed(inst: str) -> str:
    return prefix(inst) + "un:claimed"


def unsettled_dead(inst: str) -> str:
    return prefix(inst) + "un:dead"


def member_node(user: str, unit: str) -> str:
    """Node id of ``member(m,u)`` in counters, explain output and ledger charges."""
    return f"member({user},{unit})"


def unit_ref(unit: str) -> str:
    """cfg field holding a unit's caps."""
    return "=" + unit


def member_ref(unit: str) -> str:
    """cfg field holding the cap of every member(m, unit) node."""
    return "@" + unit


def extra_ref(extra_id: str) -> str:
    """cfg field holding an extra's amounts."""
    return "$" + extra_id


def pack_caps(cost: int | None, tokens: int | None) -> str:
    return f"{'-' if cost is None else cost} {'-' if tokens is None else tokens}"


def unpack_caps(value: str | bytes | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    c, t = (value.decode() if isinstance(value, bytes) else value).split(" ")
    return (None if c == "-" else int(c)), (None if t == "-" else int(t))


def unpack_counters(value: str | bytes | None) -> tuple[int, int, int, int]:
    """(cost up, cost reserved, tokens up, tokens reserved) of one counter field."""
    if value is None:
        return 0, 0, 0, 0
    a, b, c, d = (value.decode() if isinstance(value, bytes) else value).split(" ")
    return int(a), int(b), int(c), int(d)


# ---- limits, contracts and fair queues (SEMANTICS.md "Limits and contracts") ----
# Node ids: `|` separates provider and model because provider ids may hold `/` and `:`; unit ids hold
# no `:`, so no limit node id collides with a unit node or a member(...) node.

FAIRQ_CHANNEL = "eq:fq:gw:"  # + gateway id: one pub/sub channel per gateway process (fair-queue wake-ups)


def limit_unit(unit: str) -> str:
    """Limit node of a unit's whole subtree together (``limits`` on the unit)."""
    return "u:" + unit


def limit_member(unit: str) -> str:
    """Limit node of each member of a unit on their own (``member_limits`` on the unit)."""
    return "m:" + unit


def limit_provider(provider: str) -> str:
    """Limit node of a provider's contract rate limits (institution-wide)."""
    return "p:" + provider


def limit_model(provider: str, model: str) -> str:
    """Limit node of one model at a provider."""
    return f"pm:{provider}|{model}"


def limit_member_key(node: str, user: str) -> str:
    """Key suffix of one member's window and leases under a member node ``m:<unit>``."""
    return f"{node}:{user}"


def limit_window(inst: str, suffix: str) -> str:
    """HASH of a node's 60 one-second buckets (``t`` totals plus one field per second)."""
    return prefix(inst) + "rl:" + suffix


def limit_leases(inst: str, suffix: str) -> str:
    """ZSET of a node's concurrency leases: reservation id -> lease deadline (ms)."""
    return prefix(inst) + "cc:" + suffix


def contract_node(provider: str, model: str | None = None) -> str:
    """Counter field (in the period's counter hash) of a provider's or a provider model's contract."""
    return "c:" + provider if model is None else f"c:{provider}|{model}"


def queue_id(provider: str, model: str) -> str:
    """Fair-queue id of a self-hosted model (the first tier's provider and model)."""
    return f"{provider}|{model}"


def fair_queue(inst: str, queue: str) -> tuple[str, str, str]:
    """(busy ZSET, queue ZSET, state HASH) of one fair queue, in the order fairq.lua declares them."""
    base = prefix(inst) + "fq:" + queue
    return base + ":busy", base + ":q", base + ":s"
