"""Writing a batch of events to the PostgreSQL ledger, and their rollups, in the caller's transaction.

Exactly once comes from two things done together: `INSERT ... ON CONFLICT (event_id)
DO NOTHING RETURNING event_id` tells which events are new, and only those are added
to the rollups, in the same transaction. A redelivered event is then a no-op for
both the ledger and the rollups. Rows are written in a fixed order (event id, rollup
key) so two consumers writing overlapping batches during a rebalance wait for each
other instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from psycopg2.extensions import cursor as Cursor
from psycopg2.extras import execute_values

from usage.events import UsageEvent

_EVENT_COLUMNS = (
    "event_id, schema_version, request_id, institution_id, started_at, ended_at, user_id, key_id, unit_id, "
    "path, purpose, provider_id, deployment_id, model_id, input_tokens, output_tokens, image_tokens, "
    "cached_tokens, cost_micro, overage_micro, latency_ms, status, binding_unit, funding, extras_paid, ingested_at"
)
# ingested_at is the server's clock at insert: the benchmark measures end-to-end delay from it.
_EVENT_TEMPLATE = (
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::json, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s::json, %s::json, clock_timestamp())"
)
_INSERT_EVENTS = f"insert into usage_event ({_EVENT_COLUMNS}) values %s on conflict (event_id) do nothing returning event_id"

_ROLLUP_SUMS = ("requests", "input_tokens", "output_tokens", "image_tokens", "cached_tokens", "cost_micro")
_UPSERT_ROLLUPS = (
    "insert into usage_rollup (institution_id, grain, bucket_start, unit_id, model_id, user_id, purpose, "
    + ", ".join(_ROLLUP_SUMS)
    + ") values %s on conflict (institution_id, grain, bucket_start, unit_id, model_id, user_id) do update set "
    + "purpose = excluded.purpose, "
    + ", ".join(f"{c} = usage_rollup.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
)

GRAINS = ("hour", "day")


def _row(e: UsageEvent) -> tuple[object, ...]:
    return (
        e.event_id,
        e.schema_version,
        e.request_id,
        e.institution_id,
        e.started_at,
        e.ended_at,
        e.user_id,
        e.key_id,
        e.unit_id,
        orjson.dumps(e.path).decode(),
        e.purpose,
        e.provider_id,
        e.deployment_id,
        e.model_id,
        e.input_tokens,
        e.output_tokens,
        e.image_tokens,
        e.cached_tokens,
        e.cost_micro,
        e.overage_micro,
        e.latency_ms,
        e.status,
        e.binding_unit,
        orjson.dumps(e.funding).decode(),
        orjson.dumps([x.model_dump() for x in e.extras_paid]).decode(),
    )


def insert_events(cur: Cursor, events: Sequence[UsageEvent], page_size: int = 1000) -> list[UsageEvent]:
    """Insert what is new; return the events actually inserted (a redelivered one is skipped)."""
    unique = {e.event_id: e for e in events}
    ordered = [unique[k] for k in sorted(unique)]
    if not ordered:
        return []
    returned = execute_values(
        cur,
        _INSERT_EVENTS,
        [_row(e) for e in ordered],
        template=_EVENT_TEMPLATE,
        page_size=page_size,
        fetch=True,
    )
    inserted = {r[0] for r in returned}
    return [e for e in ordered if e.event_id in inserted]


@dataclass
class RollupSums:
    purpose: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    cost_micro: int = 0


RollupKey = tuple[str, str, datetime, str, str, str]


def bucket_start(at: datetime, grain: str) -> datetime:
    """The UTC hour or UTC day `at` falls in (an aware time: the columns are timestamptz)."""
    t = at.astimezone(UTC)
    if grain == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if grain == "day":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown grain {grain!r}")


def rollup(events: Iterable[UsageEvent]) -> dict[RollupKey, RollupSums]:
    """Sums per (institution, grain, bucket, unit, model, user); '' stands for a missing id."""
    sums: dict[RollupKey, RollupSums] = {}
    for e in events:
        for grain in GRAINS:
            key = (
                e.institution_id,
                grain,
                bucket_start(e.ended_at, grain),
                e.unit_id or "",
                e.model_id or "",
                e.user_id or "",
            )
            s = sums.get(key)
            if s is None:
                s = sums[key] = RollupSums(purpose=e.purpose)
            s.purpose = e.purpose
            s.requests += 1
            s.input_tokens += e.input_tokens
            s.output_tokens += e.output_tokens
            s.image_tokens += e.image_tokens
            s.cached_tokens += e.cached_tokens
            s.cost_micro += e.cost_micro
    return sums


def upsert_rollups(cur: Cursor, sums: dict[RollupKey, RollupSums], page_size: int = 1000) -> None:
    rows = [
        (
            *key,
            s.purpose,
            s.requests,
            s.input_tokens,
            s.output_tokens,
            s.image_tokens,
            s.cached_tokens,
            s.cost_micro,
        )
        for key, s in sorted(sums.items())
    ]
    if rows:
        execute_values(cur, _UPSERT_ROLLUPS, rows, page_size=page_size)


def store(cur: Cursor, events: Sequence[UsageEvent]) -> int:
    """Ledger rows and rollups for one batch; the caller commits. Returns how many events were new."""
    inserted = insert_events(cur, events)
    upsert_rollups(cur, rollup(inserted))
    return len(inserted)
