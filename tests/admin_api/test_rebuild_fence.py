"""A rebuild of the counters started by the admin API (an edit or an explain that finds Redis without the
institution) is fenced as a gateway's: refused while a gateway holds usage events Kafka has not seen.
Before, it waited only for the consumers' lag and could rebuild without a spooling gateway's events,
funding them again once they reached the ledger (attack review)."""

from __future__ import annotations

import time

import pytest

from gateway.ledger_watch import behind_key
from tests.admin_api.conftest import Env
from usage.lag import LedgerIncomplete


async def test_a_rebuild_from_the_admin_api_waits_for_a_gateway_still_spooling(env: Env) -> None:
    redis, topic = env.state.redis, env.state.settings.kafka_topic
    spooling = f"gw-test:{time.monotonic_ns()}"
    await redis.zadd(behind_key(topic), {spooling: int(time.time() * 1000) + 60_000})
    try:
        loader = env.state.quota._loader
        assert loader is not None
        with pytest.raises(LedgerIncomplete, match=spooling):
            await loader(env.inst)
    finally:
        await redis.zrem(behind_key(topic), spooling)
