"""roster: the institution file's `roster:` section, what the registrar's OneRoster files said, and which
units a roster made

Revision ID: 0005_roster
Revises: 0004
Create Date: 2026-12-06 11:00:00.000000

`eduaiq roster import` turns a SIS's OneRoster 1.2 CSV export into course units, people and memberships
(docs/oneroster.md). A delta file names only what changed, so what earlier files said is kept
(`roster_record`); `unit.source` marks the units a roster made, which `org import` leaves alone.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005_roster"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.add_column("unit", sa.Column("source", _S(length=8), nullable=True))
    op.create_table(
        "roster_settings",
        sa.Column("institution_id", _S(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("institution_id"),
    )
    op.create_table(
        "roster_record",
        sa.Column("institution_id", _S(length=64), nullable=False),
        sa.Column("kind", _S(length=16), nullable=False),
        sa.Column("sourced_id", _S(length=255), nullable=False),
        sa.Column("target", _S(length=128), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("institution_id", "kind", "sourced_id"),
    )


def downgrade() -> None:
    op.drop_table("roster_record")
    op.drop_table("roster_settings")
    op.drop_column("unit", "source")
