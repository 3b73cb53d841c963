"""provenance: where a person came from, and the id the source system knows them by

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 09:00:00.000000

People arrive from the institution file, a first SSO sign-in, the admin API, SCIM or a OneRoster roster.
Admins asked "why does this person exist, and who will remove them?"; `source` answers it and
`external_id` is the SCIM `externalId` or the roster's `sourcedId`, the key the next push or delta file
names them by. Both are nullable: rows written before this revision have no recorded source.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("app_user", sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True))
    op.add_column(
        "app_user", sa.Column("external_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("app_user", "external_id")
    op.drop_column("app_user", "source")
