"""Splitting a byte stream into server-sent events without copying more than needed."""

from __future__ import annotations

from typing import Any

import orjson


class SSESplitter:
    """Feed raw network chunks, get back complete events (without their blank-line terminator).

    `\\r\\n` line ends (sse-starlette, used by llama.cpp's server) are normalised to `\\n`.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
            if buf.endswith(b"\r"):
                self._buf = buf
                return []
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [p for p in parts if p]

    def rest(self) -> bytes:
        """Whatever followed the last blank line (an unterminated final event, usually empty)."""
        rest, self._buf = self._buf.strip(), b""
        return rest


def event_data(event: bytes) -> bytes | None:
    """The data payload of one event (multi-line data joined by newlines), or None for a comment."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def event_name(event: bytes) -> bytes | None:
    for ln in event.split(b"\n"):
        if ln.startswith(b"event:"):
            return ln[6:].strip()
    return None


def event_json(event: bytes) -> tuple[int, Any] | None:
    """Where an event's JSON object starts and the object, or None when it has none that parses (a
    `data: [DONE]`, a comment, a broken line): what the relay reads of the few events it parses."""
    start = event.find(b"{")
    if start < 0:
        return None
    try:
        return start, orjson.loads(event[start:])
    except orjson.JSONDecodeError:
        return None
