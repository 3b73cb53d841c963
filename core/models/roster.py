"""OneRoster state: the file's `roster:` section, and what the registrar's last roster said.

A delta file names only what changed (an enrollment's sourcedId with `tobedeleted`), so what every earlier
file said must be kept to know which class, person and term that enrollment was: `RosterRecord` holds one
row per OneRoster object (org, academic session, course, class, user, enrollment) with the fields the import
uses, and `target` the EduAiQ id it became (a class's unit, a person's user id).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKeyConstraint
from sqlmodel import Field, SQLModel

from core.time import utcnow


class RosterSettings(SQLModel, table=True):
    """The institution file's `roster:` section as imported (org mapping, default unit, subject rule)."""

    __tablename__ = "roster_settings"
    __table_args__ = (ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),)

    institution_id: str = Field(primary_key=True, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class RosterRecord(SQLModel, table=True):
    __tablename__ = "roster_record"
    __table_args__ = (ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),)

    institution_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=16)  # org | session | course | class | user | enrollment
    sourced_id: str = Field(primary_key=True, max_length=255)
    target: str | None = Field(default=None, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
