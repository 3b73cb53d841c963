"""Where a replica rebuilds budget counters from when Redis has lost them: the ledger in PostgreSQL.

Every settled request's `funding` (quota's `Charge`, stored as-is in the usage
event) replays into exactly the counters it once changed. Before reading, the
replica flushes its own pending events and waits (bounded) for the usage
consumers to catch up, so requests settled moments before the loss are counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from quota import Charge, InstitutionSpec
from quota.periods import Calendar, window
from quota.sources import load_spec


def charge_from_json(doc: dict[str, Any]) -> Charge:
    return Charge(
        institution=str(doc["institution"]),
        path=tuple(doc["path"]),
        period_keys=tuple(doc["period_keys"]),
        allocation={k: int(v) for k, v in doc["allocation"].items()},
        extras={k: tuple((str(x[0]), int(x[1]), int(x[2])) for x in v) for k, v in doc["extras"].items()},
    )


def earliest_open_window(spec: InstitutionSpec, now: datetime) -> datetime | None:
    """The oldest start among the periods now running: ledger rows before it cannot count. None: all time."""
    cal = Calendar(spec.timezone, spec.semesters, spec.year_start_month)
    starts: list[datetime] = []
    for unit in spec.units:
        start = window(spec.effective_period(unit.id), now, cal).start
        if start is None:  # a one-off allowance: its counters hold everything ever charged
            return None
        starts.append(start)
    return min(starts) if starts else now


def make_loader(
    engine: AsyncEngine, before_read: Callable[[], Awaitable[None]] | None = None
) -> Callable[[str], Awaitable[tuple[InstitutionSpec, Iterable[Charge]]]]:
    async def load(institution: str) -> tuple[InstitutionSpec, Iterable[Charge]]:
        if before_read is not None:
            await before_read()
        async with AsyncSession(engine) as session:
            spec = await load_spec(session, institution)
            since = earliest_open_window(spec, datetime.now(UTC))
            query = "select funding from usage_event where institution_id = :i and funding::text <> '{}'"
            params: dict[str, Any] = {"i": institution}
            if since is not None:
                query += " and ended_at >= :since"
                params["since"] = since
            rows = (await session.execute(text(query), params)).scalars().all()
        return spec, [charge_from_json(r) for r in rows]

    return load
