"""access in time: when a membership ends, and when a person was deprovisioned

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:00:00.000000

A key issued for a membership stops working once the membership has ended (plus the operator's grace);
a deprovisioned person's keys, tokens and sessions stop working at once. Rows are kept (the ledger and
the audit log name them), so both are timestamps rather than deletions. An erased person's row keeps its id
too; `erased_at` says their personal fields were erased, so an import does not write them back.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("membership", sa.Column("ends_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column(
        "app_user", sa.Column("deprovisioned_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
    )
    op.add_column("app_user", sa.Column("erased_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("app_user", "erased_at")
    op.drop_column("app_user", "deprovisioned_at")
    op.drop_column("membership", "ends_at")
