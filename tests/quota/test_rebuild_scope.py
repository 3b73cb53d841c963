"""Issue 16 item 5: a rebuild reads grants over their whole validity, and `quota check` compares only what
the ledger read covers (open periods, grants still valid), across a month boundary.

A 50 µ grant valid November-December pays 30 in November. In December `quota check` must report no drift
(before the fix: the closed November counters and the grant's 30 were "drift", nudging a rebuild), and a
rebuild must leave the grant 20, not 50 (before the fix it read only December's rows: the grant paid 50
more). Real PostgreSQL (the ledger and the institution's rows), Redis and broker; the clock is injected as
in the other quota tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.orgfile import apply_org, parse_document
from cli.quotaops import apply_budgets
from core.db import make_async_engine
from core.settings import Settings
from quota import QuotaEngine, Refusal, Reservation
from quota.results import Charge
from tests.quota.conftest import wipe

NOV = datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()
DEC = datetime(2026, 12, 5, 12, tzinfo=UTC).timestamp()


def org(inst: str) -> dict[str, Any]:
    return {
        "institution": {"id": inst, "name": "Grant U", "currency": "USD", "timezone": "UTC"},
        "providers": [],
        "units": [
            {
                "id": inst,
                "kind": "university",
                "budget": {"period": "month", "cost": {"fixed": 1}},
                "children": [
                    {
                        "id": "lab",
                        "kind": "research",
                        "budget": {"cost": {"fixed": 0}},  # everything the lab spends comes from its grant
                        "extras": [
                            {
                                "id": "g1",
                                "cost": 0.00005,
                                "valid_from": "2026-11-01",
                                "valid_to": "2026-12-31",
                            }
                        ],
                        "members": [{"user": "r1", "role": "researcher"}],
                    }
                ],
            }
        ],
        "users": [{"id": "r1", "email": "r1@grant.edu", "name": "Ria", "sso_subject": "r1@grant.edu"}],
    }


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
async def grant_u(pg_url: str, redis_url: str, kafka_bootstrap: str) -> AsyncIterator[tuple[Settings, str]]:
    inst = f"gu{uuid.uuid4().hex[:10]}"
    settings = Settings(database_url=pg_url, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap,
                        kafka_topic=f"usage-{inst}", kafka_consumer_group=f"ledger-{inst}")  # fmt: skip
    db = make_async_engine(pg_url, pool_size=1)
    async with AsyncSession(db) as session, session.begin():
        await apply_org(session, parse_document(org(inst)))
    try:
        yield settings, inst
    finally:
        await db.dispose()
        wipe(redis_url, inst)


async def spend(engine: QuotaEngine, inst: str, micro: int, at: float) -> Reservation | Refusal:
    return await engine.reserve(inst, "lab", "r1", input_tokens=micro, max_output_tokens=0, price_in=1_000_000,
                                price_out=0, min_output_tokens=0, now=at)  # fmt: skip


async def settle_into_ledger(engine: QuotaEngine, db_url: str, r: Reservation, at: float) -> None:
    """Settle and write the usage event's funding as the consumer would (the ledger is what rebuild reads)."""
    s = await engine.settle(r, input_tokens=r.reserved_cost, output_tokens=0)
    assert s.status == "settled" and s.charge is not None
    c: Charge = s.charge
    funding = {"institution": c.institution, "path": list(c.path), "period_keys": list(c.period_keys),
               "allocation": dict(c.allocation), "extras": {m: [list(x) for x in xs] for m, xs in c.extras.items()}}  # fmt: skip
    db = make_async_engine(db_url, pool_size=1)
    try:
        async with AsyncSession(db) as session, session.begin():
            await session.execute(
                text(
                    "insert into usage_event (event_id, schema_version, request_id, institution_id, started_at,"
                    " ended_at, user_id, unit_id, path, purpose, cost_micro, overage_micro, status, funding,"
                    " extras_paid, input_tokens, output_tokens, image_tokens, cached_tokens, latency_ms)"
                    " values (:id, 1, :id, :inst, :at, :at, 'r1', 'lab', '[]', 'research', :cost, 0, 'ok',"
                    " cast(:funding as json), '[]', :tokens, 0, 0, 0, 1)"
                ),
                {
                    "id": uuid.uuid4().hex,
                    "inst": r.institution,
                    "at": datetime.fromtimestamp(at, UTC),
                    "cost": r.reserved_cost,
                    "tokens": r.reserved_cost,
                    "funding": json.dumps(funding),
                },
            )
    finally:
        await db.dispose()


async def test_a_multi_month_grant_is_rebuilt_whole_and_checks_clean_across_the_month_boundary(
    grant_u: tuple[Settings, str], pg_url: str
) -> None:
    settings, inst = grant_u
    clock = Clock(NOV)
    apply: Callable[..., Any] = apply_budgets
    assert (await apply(settings, inst, clock=clock)).action == "rebuilt"  # first import: empty counters
    engine = QuotaEngine.from_url(settings.redis_url, clock=clock, reservation_ttl=10**9)
    try:
        r = await spend(engine, inst, 30, NOV)
        assert isinstance(r, Reservation)
        await settle_into_ledger(engine, pg_url, r, NOV)
        assert (await apply(settings, inst, check=True, clock=clock)).drift == []

        clock.at = DEC  # a new month: the lab's November counters are closed; the grant runs on
        assert (await apply(settings, inst, check=True, clock=clock)).drift == []
        assert (await apply(settings, inst, rebuild=True, offline=True, clock=clock)).action == "rebuilt"
        assert (await apply(settings, inst, check=True, clock=clock)).drift == []

        forty = await spend(engine, inst, 40, DEC)
        assert isinstance(forty, Refusal), "the grant paid 30 in November: 20 left, not 50"
        twenty = await spend(engine, inst, 20, DEC)
        assert isinstance(twenty, Reservation)
        await settle_into_ledger(engine, pg_url, twenty, DEC)
        assert isinstance(await spend(engine, inst, 1, DEC), Refusal)  # 30 + 20: the grant is spent
        assert (await apply(settings, inst, check=True, clock=clock)).drift == []
    finally:
        await engine.close()
