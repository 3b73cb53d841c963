"""A period rollover mid-stream: streams reserved just before a `day` budget resets, ending after it.

The rule (quota/SEMANTICS.md, Periods): a request belongs to the windows of the moment it was reserved; its
settle charges those windows even if the response ends after the reset. So every stream open across the
boundary is charged to the day that ended, in the ledger's funding records and in Redis's counters of that
day, and the new day starts with only what was reserved in it.

The clock: every process of the stack (both gateways, their usage sidecars, the consumer, the double) runs
with a test-only `sitecustomize.py` on its PYTHONPATH that adds an offset, read from a file, to
`time.time` / `time.time_ns` (the clock the quota engine's windows and deadlines are computed from;
`datetime.now` is left alone, so the ledger's `started_at` stays real). libfaketime is not used: it hangs
Python's timed waits, and the offset has to be set once the processes are up (their start-up time is not
ours to know), which a file they re-read does without a product-code hook. The test moves the clock to a
few seconds before a local midnight of the institution (America/Chicago), as an idle night would, and
waits until every gateway's `/v1/me` reports the old day before opening the streams.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis

from quota import keys
from tests.faults.harness import FaultStack, Sent, fault_stack, priced_org
from tests.faults.invariants import funded_spend, ledger_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TZ = ZoneInfo("America/Chicago")  # the demo institution's time zone
LEAD = 6.0  # seconds of the old day left when the clock is moved
STREAMS, TOKENS, CHUNK_MS = 12, 60, 200  # each stream lasts TOKENS x CHUNK_MS = 12 s, past the boundary

SITECUSTOMIZE = '''
"""Test-only clock offset (tests/faults/test_rollover.py): time.time() + the float in $FAULTS_CLOCK_FILE."""
import os
import time

_path = os.environ.get("FAULTS_CLOCK_FILE")
if _path:
    _time, _time_ns, _mono = time.time, time.time_ns, time.monotonic
    _state = [0.0, -1.0]  # offset, when it was read (monotonic)

    def _offset():
        now = _mono()
        if now - _state[1] > 0.1:
            _state[1] = now
            try:
                with open(_path) as f:
                    _state[0] = float(f.read() or 0)
            except (OSError, ValueError):
                pass
        return _state[0]

    time.time = lambda: _time() + _offset()
    time.time_ns = lambda: _time_ns() + int(_offset() * 1e9)
'''


@dataclass
class Stream:
    user: str
    url: str
    request_id: str | None = None
    head_at: float = 0.0  # real time.time() when the head came (the hold was taken before it)
    end_at: float = 0.0  # real time.time() when the last byte came
    body: bytes = b""


def _day_key(day: date) -> str:
    return f"d:{day.isoformat()}"


def _course(me: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in me["budget"]["nodes"] if n["unit"] == "cs101" and n["kind"] != "member")  # type: ignore[no-any-return]


async def _stream(client: httpx.AsyncClient, fs: FaultStack, s: Stream, i: int) -> None:
    sent = Sent(f"m{i:04d}rollover")  # the marker the double logs: I2 matches its answer by it
    fs.sent.append(sent)
    body = {"model": "demo-chat", "stream": True, "max_tokens": TOKENS,
            "messages": [{"role": "user", "content": f"{sent.marker} tell me a long story"}]}  # fmt: skip
    async with client.stream("POST", s.url + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {fs.stack.key(s.user)}"}) as r:  # fmt: skip
        assert r.status_code == 200, await r.aread()
        s.head_at = time.time()
        s.request_id = sent.request_id = r.headers["x-request-id"]
        sent.status = r.status_code
        async for chunk in r.aiter_bytes():
            s.body += chunk
    s.end_at = time.time()


def test_period_rollover_mid_stream(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    clock_dir = tmp_path / "clock"
    clock_dir.mkdir()
    (clock_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    clock_file = clock_dir / "offset"
    clock_file.write_text("0")
    path = os.pathsep.join(p for p in (str(clock_dir), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "FAULTS_CLOCK_FILE": str(clock_file)}
    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, reply_tokens=TOKENS,
                     chunk_delay_ms=CHUNK_MS, extra_env=env,
                     mutate=priced_org(unit_cap=8_000, member_cap=5_000, grant=600, period="day")) as fs:  # fmt: skip
        # The boundary: the local midnight two days on, so the old day differs from today's real one and
        # the gateways visibly take up the new clock.
        today = datetime.now(TZ).date()
        old_day, new_day = today + timedelta(days=1), today + timedelta(days=2)
        boundary = datetime.combine(new_day, datetime.min.time(), TZ).timestamp()
        offset = boundary - LEAD - time.time()
        clock_file.write_text(repr(offset))
        for url in fs.urls:  # every gateway has taken up the new clock (it re-reads the file)
            deadline = time.monotonic() + 30
            while (key := _course(_me(url, fs))["period_key"]) != _day_key(old_day):
                assert time.monotonic() < deadline, f"{url} still in {key}"
                time.sleep(0.05)

        streams = [Stream(("alice", "bob")[i % 2], fs.urls[i % 2]) for i in range(STREAMS)]

        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=STREAMS + 4)) as c:
                await asyncio.gather(*(_stream(c, fs, s, i) for i, s in enumerate(streams)))
            # The new day: room for the same again, whatever the old day spent.
            await fs.drive(STREAMS, concurrency=6, stream=True, max_tokens=TOKENS // 4)

        asyncio.run(scenario())
        spanning = [s for s in streams if s.head_at + offset < boundary < s.end_at + offset]
        assert spanning, "no stream was open across the boundary: the run proves nothing"
        assert all(s.body.endswith(b"data: [DONE]\n\n") for s in streams)
        fs.assert_invariants()  # I1-I3

        rows = {r.request_id: r for r in ledger_rows(fs.stack.db_url, fs.stack.institution)}
        old_key, new_key = _day_key(old_day), _day_key(new_day)
        for s in spanning:  # reserved in the old day, settled in the new one: charged to the old day
            keys_of = set(rows[s.request_id].funding["period_keys"])
            assert keys_of == {old_key}, (s.request_id, keys_of)
        later = [r for r in rows.values() if r.request_id not in {s.request_id for s in streams}]
        assert later and all(set(r.funding["period_keys"]) == {new_key} for r in later)

        # Redis agrees with the ledger, day by day: what each node used in each day's counters is what the
        # ledger's funding charged it in that day; nothing is still held.
        per_node, _ = funded_spend(rows.values())
        client = redis.Redis.from_url(redis_url)
        try:
            for key in (old_key, new_key):
                counters = client.hgetall(keys.counters(fs.stack.institution, key))
                used = {
                    f.decode(): keys.unpack_counters(v)
                    for f, v in counters.items()
                    if len(v.split()) == 4  # node counters; other fields are the hash's bookkeeping
                }
                assert {n: u[1] for n, u in used.items() if u[1]} == {}, f"{key}: holds left"
                want = {node: v for (node, k), v in per_node.items() if k == key and v}
                assert {n: u[0] for n, u in used.items() if u[0]} == want, key
        finally:
            client.close()


def _me(url: str, fs: FaultStack) -> dict[str, Any]:
    r = httpx.get(url + "/v1/me", headers={"Authorization": f"Bearer {fs.stack.key('alice')}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]
