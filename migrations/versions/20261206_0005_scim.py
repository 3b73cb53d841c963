"""scim: the institution's SCIM bearer tokens, the groups its IdP pushes and their members, what the IdP
sent about each person, and the institution file's `scim:` section

Revision ID: 0005_scim
Revises: 0004
Create Date: 2026-12-06 10:00:00.000000

An IdP (Entra ID, Okta, midPoint/Grouper) creates, updates and deprovisions people and pushes groups whose
membership becomes unit memberships at once, as the file's `scim:` section maps them (docs/scim.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005_scim"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "scim_token",
        sa.Column("id", _S(length=32), nullable=False),
        sa.Column("token_hash", _S(length=64), nullable=False),
        sa.Column("prefix", _S(length=16), nullable=False),
        sa.Column("institution_id", _S(length=64), nullable=False),
        sa.Column("created_by", _S(length=128), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_scim_token_institution_id"), "scim_token", ["institution_id"], unique=False)
    op.create_table(
        "scim_settings",
        sa.Column("institution_id", _S(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("institution_id"),
    )
    op.create_table(
        "scim_user",
        sa.Column("institution_id", _S(length=64), nullable=False),
        sa.Column("user_id", _S(length=128), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("deleted_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["institution_id", "user_id"], ["app_user.institution_id", "app_user.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("institution_id", "user_id"),
    )
    op.create_table(
        "scim_group",
        sa.Column("institution_id", _S(length=64), nullable=False),
        sa.Column("id", _S(length=64), nullable=False),
        sa.Column("display_name", _S(length=256), nullable=False),
        sa.Column("external_id", _S(length=255), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("institution_id", "id"),
        sa.UniqueConstraint("institution_id", "display_name"),
    )
    op.create_table(
        "scim_group_member",
        sa.Column("institution_id", _S(length=64), nullable=False),
        sa.Column("group_id", _S(length=64), nullable=False),
        sa.Column("user_id", _S(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["institution_id", "group_id"], ["scim_group.institution_id", "scim_group.id"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["institution_id", "user_id"], ["app_user.institution_id", "app_user.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("institution_id", "group_id", "user_id"),
    )
    op.create_index(op.f("ix_scim_group_member_user_id"), "scim_group_member", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_scim_group_member_user_id"), table_name="scim_group_member")
    op.drop_table("scim_group_member")
    op.drop_table("scim_group")
    op.drop_table("scim_user")
    op.drop_table("scim_settings")
    op.drop_index(op.f("ix_scim_token_institution_id"), table_name="scim_token")
    op.drop_table("scim_token")
