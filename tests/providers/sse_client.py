"""Reading what the router hands the gateway, the way an OpenAI client would."""

from __future__ import annotations

from typing import Any

import orjson

from providers.router import UpstreamResponse


async def collect(resp: UpstreamResponse) -> tuple[list[bytes], list[dict[str, Any]]]:
    """All blobs, and the JSON chunks parsed from them (asserting every blob holds whole events)."""
    blobs = [b async for b in resp]
    chunks: list[dict[str, Any]] = []
    raw = b"".join(blobs)
    for blob in blobs:
        assert blob.endswith(b"\n\n"), blob[-40:]
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    for ev in events[:-1]:
        assert ev.startswith(b"data: "), ev[:40]
        chunks.append(orjson.loads(ev[6:]))
    return blobs, chunks


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def tool_calls_of(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for choice in c.get("choices") or []:
            for tc in choice["delta"].get("tool_calls") or []:
                cur = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                if tc.get("id"):
                    cur["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    cur["name"] = fn["name"]
                cur["arguments"] += fn.get("arguments") or ""
    return calls


def finish_reason(chunks: list[dict[str, Any]]) -> str | None:
    reasons = [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c.get("choices") and c["choices"][0]["finish_reason"]
    ]
    return reasons[-1] if reasons else None


def usage_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in chunks if c.get("choices") == [] and c.get("usage")]
