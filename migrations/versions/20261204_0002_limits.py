"""limits: unit rate limits and the institution's fair-share weights

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 09:00:00.000000

Provider and model limits, contracts and slots live in the existing `options` JSON of their rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("unit", sa.Column("limits", sa.JSON(), nullable=True))
    op.add_column(
        "institution", sa.Column("fair_share", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
    )


def downgrade() -> None:
    op.drop_column("institution", "fair_share")
    op.drop_column("unit", "limits")
