"""Issue 16 item 3: Redis loses its data while Kafka is down. The gateway's automatic rebuild used to wait
30 s for the consumers, give up and rebuild from a ledger without the spooled events: the cap was funded
again (140 funded requests on a cap of 100). Now it refuses (503, retried by clients) until the ledger is
known complete — its own events out of the spool and in Kafka, the consumers caught up — and then rebuilds
with them. Real gateway, sidecar, consumer, broker, PostgreSQL and Redis processes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import redis

from cli.services.kafka import start_kafka
from cli.services.process import free_port
from tests.gateway.harness import _spawn, gateway_stack, serve_until_refused
from tests.gateway.test_recovery import PER_REQUEST, _burst, _ledger_cost, _priced

CAP = 10 * PER_REQUEST  # ten requests


def test_redis_lost_while_kafka_is_down_refuses_until_the_ledger_is_complete(
    pg_server_url: str, private_redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    broker = start_kafka(tmp_path / "kafka", port)
    try:
        with gateway_stack(pg_server_url, private_redis_url, f"127.0.0.1:{port}", tmp_path, mutate=_priced(CAP),
                           upstream_args=("--reply-tokens", "1000")) as stack:  # fmt: skip
            key = stack.key("alice")
            broker.stop()  # Kafka down: the gateway's events go to its spool
            before = Counter(r.status_code for r in asyncio.run(_burst(stack.base_url, key, 6)))
            assert before == {200: 6}
            redis.Redis.from_url(private_redis_url).flushall()  # and Redis loses its data

            during = Counter(r.status_code for r in asyncio.run(_burst(stack.base_url, key, 20)))
            # Before the fix: 10 more funded after a 30 s wait (16 on a cap of 10).
            assert during == {503: 20}, during

            broker = start_kafka(tmp_path / "kafka", port)  # Kafka back: the spool replays
            log = tmp_path / "consumer.log"
            stack.logs.append(log)
            stack.procs.append(_spawn(["cli", "consume"], stack.env, log))
            served = serve_until_refused(stack.base_url, key, PER_REQUEST, 180)
            assert served[200] == 4, served  # rebuilt with the six spooled requests: four left
            deadline = time.monotonic() + 60
            while _ledger_cost(stack.db_url, stack.institution)[0] < 10 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _ledger_cost(stack.db_url, stack.institution) == (10, CAP, CAP)  # funded == cap, not more
    finally:
        broker.stop()
