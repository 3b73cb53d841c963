"""Helpers shared by the wire-protocol test doubles: run an aiohttp app on a free port, count tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from aiohttp import web


class RunningApp:
    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()


async def run_app(app: web.Application) -> RunningApp:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return RunningApp(runner, port)


def tokens_of(texts: Iterable[str]) -> int:
    return math.ceil(sum(len(t) for t in texts) / 4)


def example_args(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    return {
        k: ("Paris" if (props.get(k) or {}).get("type") == "string" else 1)
        for k in schema.get("required") or props
    }


def png_data_url(width: int, height: int, fmt: str = "PNG") -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format=fmt)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()
