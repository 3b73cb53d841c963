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
