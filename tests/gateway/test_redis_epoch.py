"""Issue 16 item 3 (second half): Redis comes back with only part of its data — here its append-only file as
it was five requests ago, as after losing the file's tail or failing over to a lagging replica. The compile
token survived, so nothing triggered a rebuild and the lost settles were funded again (15 on a cap of 10).
Now every gateway notices the new server run id within a second and the institution is rebuilt from the
ledger (fenced as any rebuild). Real gateway, consumer, broker, PostgreSQL and Redis (with AOF) processes.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

from cli.services.process import free_port
from cli.services.redis import start_redis
from tests.gateway.harness import gateway_stack, serve_until_refused
from tests.gateway.test_recovery import PER_REQUEST, _burst, _ledger_cost, _priced

CAP = 10 * PER_REQUEST


def _copy_data(src: Path, dst: Path) -> None:
    dst.mkdir()
    for item in src.iterdir():
        if item.name == "redis.log":
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)


def _wait_ledger(stack: object, n: int) -> None:
    deadline = time.monotonic() + 60
    while _ledger_cost(stack.db_url, stack.institution)[0] < n and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.5)


def test_redis_back_with_an_older_append_only_file_is_rebuilt_from_the_ledger(
    pg_server_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    port, data = free_port(), tmp_path / "redis"
    server = start_redis(data, port, persist=True)
    try:
        with gateway_stack(pg_server_url, f"redis://127.0.0.1:{port}/0", kafka_bootstrap, tmp_path, mutate=_priced(CAP),
                           consumer=True, upstream_args=("--reply-tokens", "1000")) as stack:  # fmt: skip
            key = stack.key("alice")
            assert Counter(r.status_code for r in asyncio.run(_burst(stack.base_url, key, 5))) == {200: 5}
            _wait_ledger(stack, 5)
            time.sleep(3)  # the AOF is fsynced every second; the gateways' watch has run
            _copy_data(data, tmp_path / "older")  # Redis's file as it is now: five requests spent
            assert Counter(r.status_code for r in asyncio.run(_burst(stack.base_url, key, 5))) == {200: 5}
            _wait_ledger(stack, 10)
            assert _ledger_cost(stack.db_url, stack.institution) == (10, CAP, CAP)

            server.stop()
            shutil.rmtree(data)
            shutil.copytree(tmp_path / "older", data)  # the last five settles are lost with the file's tail
            server = start_redis(data, port, persist=True)
            time.sleep(3)  # a few rounds of the gateways' watch

            served = serve_until_refused(stack.base_url, key, PER_REQUEST, 120)
            assert served[200] == 0, served  # before the fix: five more funded (15 on a cap of 10)
            time.sleep(2)
            assert _ledger_cost(stack.db_url, stack.institution) == (10, CAP, CAP)
    finally:
        server.stop()
