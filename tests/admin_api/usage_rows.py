"""Usage events written straight into the ledger table, for the people and leavers views (issue 18).

The gateway is what writes these in production; a test that needs a key used after its membership ended
writes the event itself, the honest way to stand for a failure the gateway prevents."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import text

from core.models import UsageEvent
from tests.admin_api.conftest import Env
from tests.admin_api.helpers import add


async def used(
    env: Env, user: str, unit: str, at: datetime, key: str | None = None, cost_micro: int = 1_000
) -> UsageEvent:
    """One request by `user` in `unit` (with `key`), admitted at `at` and answered a second later."""
    event = UsageEvent(event_id=str(uuid.uuid4()), request_id=f"req-{uuid.uuid4().hex}", institution_id=env.inst,
                       started_at=at, ended_at=at + timedelta(seconds=1), user_id=user, key_id=key, unit_id=unit,
                       path=[unit], model_id="llama-3.1-8b", input_tokens=10, output_tokens=5,
                       cost_micro=cost_micro, status="ok")  # fmt: skip
    await add(env, event)
    return event


async def busy_ledger(env: Env, unit: str, events: int = 20_000, people: int = 200) -> None:
    """`events` requests by `people` others in `unit` over 30 days, and fresh planner statistics: the
    ledger a term leaves behind, so a query plan is the one a real institution would get."""
    async with env.db() as session, session.begin():
        await session.execute(text(
            "insert into usage_event (event_id, schema_version, request_id, institution_id, started_at, ended_at, "
            "user_id, key_id, unit_id, path, purpose, input_tokens, output_tokens, image_tokens, cached_tokens, "
            "cost_micro, overage_micro, latency_ms, status, funding, extras_paid) "
            "select gen_random_uuid()::text, 1, 'req-' || g, :inst, now() - (g % 43200) * interval '1 minute', "
            "now() - (g % 43200) * interval '1 minute', 'bulk-' || (g % :people), null, :unit, '[]', 'other', "
            "10, 5, 0, 0, 1000, 0, 5, 'ok', '{}', '[]' from generate_series(1, :events) g"),
            {"inst": env.inst, "unit": unit, "people": people, "events": events})  # fmt: skip
    async with env.db() as session, session.begin():
        await session.execute(text("analyze usage_event"))
