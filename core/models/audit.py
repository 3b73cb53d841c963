"""Who changed what, when: every admin change, readable through the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from core.time import utcnow


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_inst_at", "institution_id", "at"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    institution_id: str = Field(max_length=64)
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=128)  # user id, or "org-import" / "cli"
    action: str = Field(max_length=64)
    target: str = Field(max_length=256)
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
