"""SCIM provisioning state: the institution's bearer tokens, the groups an IdP pushes, their members, what
the IdP sent about each person, and the file's `scim:` section.

The person itself is the ordinary `User` row (source "scim"): SCIM adds no second identity. What the IdP
sent beyond the fields EduAiQ uses (given and family name, the enterprise extension) is kept verbatim in
`ScimUser.attributes`, so what the IdP reads back is what it wrote.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKeyConstraint, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.time import utcnow


class ScimToken(SQLModel, table=True):
    """One bearer token per institution for its IdP; only the SHA-256 is kept (core.keys.hash_secret)."""

    __tablename__ = "scim_token"
    __table_args__ = (ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),)

    id: str = Field(primary_key=True, max_length=32)
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    institution_id: str = Field(max_length=64, index=True)
    created_by: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ScimSettings(SQLModel, table=True):
    """The institution file's `scim:` section as imported; a row here is what "SCIM is in use" means."""

    __tablename__ = "scim_settings"
    __table_args__ = (ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),)

    institution_id: str = Field(primary_key=True, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class ScimUser(SQLModel, table=True):
    """What the IdP last sent for a person; `deleted_at` set by a SCIM DELETE (the person is deprovisioned
    and the resource answers 404, but the user row stays: the ledger names it)."""

    __tablename__ = "scim_user"
    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "user_id"], ["app_user.institution_id", "app_user.id"], ondelete="CASCADE"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(primary_key=True, max_length=128)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


class ScimGroup(SQLModel, table=True):
    __tablename__ = "scim_group"
    __table_args__ = (
        ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        UniqueConstraint("institution_id", "display_name"),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    display_name: str = Field(max_length=256)
    external_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ScimGroupMember(SQLModel, table=True):
    __tablename__ = "scim_group_member"
    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "group_id"], ["scim_group.institution_id", "scim_group.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["institution_id", "user_id"], ["app_user.institution_id", "app_user.id"], ondelete="CASCADE"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    group_id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(primary_key=True, max_length=128, index=True)
