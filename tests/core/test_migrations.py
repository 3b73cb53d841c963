"""The models and the migrations describe the same schema, and the migrations run both ways."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import core.models
from core.db import sync_url
from core.migrate import downgrade, upgrade


def test_models_match_migrations(fresh_pg_url: str) -> None:
    engine = create_engine(sync_url(fresh_pg_url))
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), core.models.metadata
        )
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_downgrade_to_base_and_back(fresh_pg_url: str) -> None:
    engine = create_engine(sync_url(fresh_pg_url))
    assert "unit" in inspect(engine).get_table_names()
    downgrade(fresh_pg_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(fresh_pg_url)
    assert set(core.models.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
