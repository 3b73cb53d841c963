"""Usage events written straight into the ledger table, for the people and leavers views (issue 18).

The gateway is what writes these in production; a test that needs a key used after its membership ended
writes the event itself, the honest way to stand for a failure the gateway prevents."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

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
