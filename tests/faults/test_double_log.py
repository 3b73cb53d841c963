"""The upstream double's served log (selfhost/demo_model.py --served-log), which I2 trusts as ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from selfhost.demo_model import start_demo_model

pytestmark = pytest.mark.faults


async def test_served_log_records_reported_tokens_and_cut_streams(tmp_path: Path) -> None:
    log = tmp_path / "served.jsonl"
    async with await start_demo_model(reply_tokens=5, served_log=str(log)) as demo:
        async with httpx.AsyncClient(base_url=demo.base_url, timeout=30) as client:
            r = await client.post("/chat/completions", json={
                "model": "demo-chat", "messages": [{"role": "user", "content": "mark1 hello there"}]})  # fmt: skip
            usage = r.json()["usage"]
            r = await client.post("/completions", json={"model": "demo-chat", "prompt": ["mark2 a", "b"],
                                                         "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
            assert r.text.endswith("data: [DONE]\n\n")
            streamed = json.loads(r.text.split("data: ")[-2])["usage"]  # the chunk before [DONE]
            demo.configure(chunk_delay_ms=200)
            async with client.stream("POST", "/chat/completions", json={
                "model": "demo-chat", "stream": True, "messages": [{"role": "user", "content": "mark3"}]}) as s:  # fmt: skip
                async for _ in s.aiter_bytes():
                    break  # the client goes away after the first chunk
            for _ in range(50):
                if len(log.read_text().splitlines()) == 3:
                    break
                import asyncio

                await asyncio.sleep(0.1)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["marker"].split()[0] for e in entries] == ["mark1", "mark2", "mark3"]
    first, second, third = entries
    assert (first["prompt_tokens"], first["completion_tokens"], first["complete"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], True)  # fmt: skip
    assert (
        second["completion_tokens"] == streamed["completion_tokens"]
        and second["complete"]
        and second["stream"]
    )
    assert not third["complete"] and 1 <= third["events_written"] < 7
