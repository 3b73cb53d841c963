from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from selfhost.demo_model import DemoModelHandle, start_demo_model


@pytest.fixture
async def demo() -> AsyncIterator[DemoModelHandle]:
    h = await start_demo_model("127.0.0.1", 0)
    yield h
    await h.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
