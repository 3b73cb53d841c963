"""Fixtures for the usage pipeline tests: settings pointing at the real services, one topic per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import make_async_engine, session_factory
from core.settings import Settings
from tests.usage.helpers import settings_for


@pytest.fixture
def usage_settings(fresh_pg_url: str, kafka_bootstrap: str, tmp_path: Path, unique_id: str) -> Settings:
    return settings_for(fresh_pg_url, kafka_bootstrap, f"usage-{unique_id}", tmp_path / "state")


@pytest.fixture
async def db_session(fresh_pg_url: str) -> AsyncIterator[AsyncSession]:
    """An AsyncSession bound to its engine, as the admin API's routes get one."""
    engine = make_async_engine(fresh_pg_url, pool_size=2)
    try:
        async with session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()
