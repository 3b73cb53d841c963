"""Compile an institution's budget tree into what the hot path reads.

Control plane apart from data plane: the admin side edits rules in
PostgreSQL; this module resolves them (caps.py), writes the numbers the Lua
scripts read into ``eq:{I}:cfg`` with a fresh compile token, and publishes an
invalidation. Reserve calls carry the token their path was built from, so a
replica that has not heard the invalidation yet still cannot reserve against
old caps: the script answers STALE and the replica re-reads the snapshot. An
edit therefore applies to the very next request on every replica.

A partial compile (``changed=[unit ids]``) rewrites the caps of those units'
subtrees only (a percent or fair-share cap below an edited unit depends on
it). It leaves the amount field of an extra removed from the tree in place:
no path lists a removed extra, so nothing reads it, and the next full compile
or rebuild drops it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from quota import keys, scripts
from quota.caps import resolve_caps, resolve_member_caps
from quota.model import METRICS, InstitutionSpec, validate


@dataclass(frozen=True)
class Compiled:
    institution: str
    fields: dict[str, str]  # cfg fields other than ver/snap
    snapshot: str  # JSON read by quota.snapshot.Snapshot
    owned: dict[str, list[str]]  # unit id -> the cfg field names it may own (for partial compiles)


def compile_spec(spec: InstitutionSpec) -> Compiled:
    """Pure: resolve every cap and build the cfg fields and the snapshot JSON."""
    validate(spec)
    caps = resolve_caps(spec)
    mcaps = resolve_member_caps(spec, caps)
    fields: dict[str, str] = {}
    owned: dict[str, list[str]] = {}
    units: dict[str, Any] = {}
    for u in spec.units:
        names = [keys.unit_ref(u.id), keys.member_ref(u.id)]
        for name, holder in ((names[0], caps[u.id]), (names[1], mcaps[u.id])):
            if any(holder[m] is not None for m in METRICS):
                fields[name] = keys.pack_caps(holder["cost"], holder["tokens"])
        extras = sorted(u.extras, key=lambda x: (x.valid_to, x.id))
        for x in extras:
            name = keys.extra_ref(x.id)
            names.append(name)
            fields[name] = keys.pack_caps(x.amounts.get("cost"), x.amounts.get("tokens"))
        owned[u.id] = names
        units[u.id] = {
            "p": u.parent,
            "k": u.kind,
            "n": u.name or u.id,
            "per": spec.effective_period(u.id),
            "cap": caps[u.id],
            "mcap": mcaps[u.id],
            "mc": u.member_count,
            "x": [
                {
                    "id": x.id,
                    "a": dict(x.amounts),
                    "f": x.valid_from.isoformat(),
                    "t": x.valid_to.isoformat(),
                    "cb": x.chargeback,
                }
                for x in extras
            ],
        }
    snap = {
        "id": spec.id,
        "name": spec.name or spec.id,
        "tz": spec.timezone,
        "sem": [[s.id, s.start.isoformat(), s.end.isoformat()] for s in spec.semesters],
        "ysm": spec.year_start_month,
        "units": units,
    }
    # Only when set: an institution without limits keeps its snapshot (and its zero-cost path) as before.
    if spec.limits:
        snap["lim"] = {n: [lim.rpm, lim.tpm, lim.concurrent] for n, lim in sorted(spec.limits.items())}
    if spec.contracts:
        snap["con"] = {n: [c.period, c.cost] for n, c in sorted(spec.contracts.items())}
    return Compiled(spec.id, fields, json.dumps(snap, separators=(",", ":"), sort_keys=True), owned)


def new_token() -> str:
    return f"{time.time_ns():x}-{secrets.token_hex(4)}"


def partial_fields(
    spec: InstitutionSpec, compiled: Compiled, changed: Iterable[str], previous: dict[str, Any] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Fields to set and to delete for a compile of the subtrees under ``changed``.

    ``previous`` is the snapshot being replaced: extras it lists for units in
    scope that the spec no longer has lose their amount field, so a pending
    reservation that listed such an extra cannot be settled against it.
    """
    scope: set[str] = set()
    for uid in changed:
        scope.update(spec.subtree(uid))
    to_set: dict[str, str] = {}
    to_del: list[str] = []
    for uid in sorted(scope):
        for name in compiled.owned[uid]:
            if name in compiled.fields:
                to_set[name] = compiled.fields[name]
            else:
                to_del.append(name)
        old_unit = (previous or {}).get("units", {}).get(uid, {})
        for x in old_unit.get("x", ()):
            name = keys.extra_ref(x["id"])
            if name not in compiled.fields and name not in to_del:
                to_del.append(name)
    return to_set, to_del


async def server_run_id(redis: Redis) -> str:
    """The Redis server's ``run_id``: new after every restart, another server's after a failover; empty
    from a server or proxy that does not report one (the epoch checks then cannot tell restarts apart)."""
    return str((await redis.info("server")).get("run_id", ""))


async def install(
    redis: Redis, spec: InstitutionSpec, changed: Iterable[str] | None = None, *, existing: bool = False
) -> str | None:
    """Write compiled caps to Redis atomically, then publish the invalidation. Returns the token.

    The cfg records the server's ``run_id`` (``rid``) with the caps: a Redis that later comes back with
    this data under another run_id (an older file, a lagging replica) is noticed by the epoch check
    (QuotaEngine.check_epoch) even if no check had run since this compile. ``existing``: only over a
    compiled institution (None, nothing written, if it is not): an edit must not put caps back over
    counters the epoch check just disowned, which only a rebuild from the ledger may replace.
    The institution joins the set of institutions first, so that no file cut between the two writes
    leaves budgets the epoch check does not know of."""
    compiled = compile_spec(spec)
    token = new_token()
    to_del: list[str] = []
    if changed is None:
        mode, to_set = "full", compiled.fields
    else:
        mode = "partial"
        raw = await redis.hget(keys.cfg(spec.id), "snap")
        previous = json.loads(raw) if raw else None
        to_set, to_del = partial_fields(spec, compiled, changed, previous)
    to_set = {**to_set, "rid": await server_run_id(redis)}
    args: list[Any] = [token, compiled.snapshot, f"{mode}-existing" if existing else mode, len(to_set)]
    for name, value in to_set.items():
        args += [name, value]
    args += [len(to_del), *to_del]
    await redis.sadd(keys.INSTITUTIONS, spec.id)
    if str(await scripts.run(redis, "compile", [keys.cfg(spec.id)], args)) == "NOINST":
        return None
    await redis.publish(keys.INVALIDATION_CHANNEL, f"{spec.id} {token}")
    return token
