"""Fixtures for the usage pipeline tests: settings pointing at the real services, one topic per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from tests.usage.helpers import settings_for


@pytest.fixture
def usage_settings(fresh_pg_url: str, kafka_bootstrap: str, tmp_path: Path, unique_id: str) -> Settings:
    return settings_for(fresh_pg_url, kafka_bootstrap, f"usage-{unique_id}", tmp_path / "state")
