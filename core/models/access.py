"""People, their roles in units, and the credentials they use (API keys and tokens, stored hashed)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import JSON, Column, ForeignKeyConstraint, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.time import utcnow


class User(SQLModel, table=True):
    __tablename__ = "app_user"
    __table_args__ = (
        ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        UniqueConstraint("institution_id", "sso_subject"),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=128)
    email: str | None = None
    name: str | None = None
    sso_subject: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # Set when the person left (SCIM `active: false`, an admin): their keys, tokens and sessions stop at
    # once; the row stays because the ledger and the audit log name it.
    deprovisioned_at: datetime | None = None
    # Set when the person's personal fields were erased (a GDPR or FERPA request): an institution file that
    # still names them does not write their name, e-mail or SSO subject back.
    erased_at: datetime | None = None
    # Where the person came from: file | sso | api | scim | roster (None: written before this was kept).
    source: str | None = Field(default=None, max_length=8)
    # The id the source system knows them by (SCIM externalId, OneRoster sourcedId), for its next push.
    external_id: str | None = Field(default=None, max_length=255)


# What identifies a person, as opposed to what they did: erasure blanks these (the subject it pseudonymises).
USER_PERSONAL_FIELDS = ("email", "name", "sso_subject")


def erased_subject(institution_id: str, subject: str) -> str:
    """What an erased person's SSO subject becomes: not the subject, yet what it was can be recognised, so
    signing in again with it is refused rather than taken for a newcomer."""
    return "erased:" + hashlib.sha256(f"{institution_id}\0{subject}".encode()).hexdigest()


class Membership(SQLModel, table=True):
    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "unit_id"], ["unit.institution_id", "unit.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["institution_id", "user_id"], ["app_user.institution_id", "app_user.id"], ondelete="CASCADE"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    unit_id: str = Field(primary_key=True, max_length=128)
    user_id: str = Field(primary_key=True, max_length=128, index=True)
    role: str = Field(max_length=32)  # student | ta | instructor | researcher | ...
    # Who granted it: "file" rows are synced by `org import`; "sso" and "api" rows are never touched by it.
    source: str = Field(default="api", max_length=8)
    # When the membership ends (a term's end, a contract's): its keys stop working then, plus the
    # operator's grace (EDUAIQ_MEMBERSHIP_GRACE_SECONDS). None: until removed.
    ends_at: datetime | None = None


class AdminScope(SQLModel, table=True):
    """A role over a unit and everything below it (admin, finance, auditor)."""

    __tablename__ = "admin_scope"
    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "unit_id"], ["unit.institution_id", "unit.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["institution_id", "user_id"], ["app_user.institution_id", "app_user.id"], ondelete="CASCADE"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    unit_id: str = Field(primary_key=True, max_length=128)
    user_id: str = Field(primary_key=True, max_length=128, index=True)
    role: str = Field(primary_key=True, max_length=32)  # admin | finance | auditor
    source: str = Field(default="api", max_length=8)


class ApiKey(SQLModel, table=True):
    """A key is issued to one user for one unit; only its SHA-256 is kept, so a database leak leaks no key."""

    __tablename__ = "api_key"
    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "user_id", "unit_id"],
            ["membership.institution_id", "membership.user_id", "membership.unit_id"],
            ondelete="CASCADE",
        ),
    )

    id: str = Field(primary_key=True, max_length=32)
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)  # shown in lists so a person can tell keys apart
    institution_id: str = Field(max_length=64, index=True)
    user_id: str = Field(max_length=128)
    unit_id: str = Field(max_length=128)
    name: str | None = None
    created_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class PersonalAccessToken(SQLModel, table=True):
    """Tokens for automation (finance exports) with explicit scopes; hashed like API keys."""

    __tablename__ = "personal_access_token"
    id: str = Field(primary_key=True, max_length=32)
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    institution_id: str = Field(max_length=64, index=True)
    user_id: str = Field(max_length=128)
    name: str | None = None
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
