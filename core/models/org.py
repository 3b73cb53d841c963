"""The organisation tree and its budget rules: what `quota/` compiles into caps."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKeyConstraint, Numeric, text
from sqlmodel import Field, SQLModel

from core.time import utcnow


class Institution(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    name: str
    currency: str = Field(max_length=3)
    timezone: str
    # [{id, start, end}] in the institution's calendar; semesters are read whole, never queried by date in SQL.
    semesters: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Identity-provider settings (the institution file's `sso:` section); secrets stay in the environment.
    sso: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The institution file's `fair_share:` section ({} when absent): weights for self-hosted models' queues.
    fair_share: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default=text("'{}'"))
    )
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Unit(SQLModel, table=True):
    __table_args__ = (
        ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),
        ForeignKeyConstraint(
            ["institution_id", "parent_id"], ["unit.institution_id", "unit.id"], ondelete="RESTRICT"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=128)
    parent_id: str | None = Field(default=None, max_length=128, index=True)
    kind: str = Field(max_length=32)
    name: str | None = None
    # None: the parent's period (spec 3: "a unit's period defaults to its parent's").
    period: str | None = Field(default=None, max_length=16)
    # None: every model the parent allows. A list narrows it; import checks it is a subset.
    models: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    default_model: str | None = None
    # {"limits": {...}, "member_limits": {...}} with the institution file's field names; None: no limits.
    limits: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    archived: bool = False
    position: int = 0
    # Who made it: None for the institution file and the admin API; "roster" for a OneRoster class, which
    # `org import` neither archives nor exports (the registrar's roster, not the file, owns it).
    source: str | None = Field(default=None, max_length=8)


class BudgetRule(SQLModel, table=True):
    """One rule per (unit, metric, scope). `scope='unit'` is the unit's allocation, `scope='member'` its member cap.

    `amount` holds fixed caps as integers (micro-units for cost, tokens for tokens) so money never passes
    through floats; `ratio` holds a percent (0..100) or a fair-share factor.
    """

    __tablename__ = "budget_rule"
    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "unit_id"], ["unit.institution_id", "unit.id"], ondelete="CASCADE"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    unit_id: str = Field(primary_key=True, max_length=128)
    metric: str = Field(primary_key=True, max_length=16)  # cost | tokens
    scope: str = Field(primary_key=True, max_length=16)  # unit | member
    mode: str = Field(max_length=16)  # fixed | percent | fair_share
    amount: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    ratio: Decimal | None = Field(default=None, sa_column=Column(Numeric(12, 6), nullable=True))


class Extra(SQLModel, table=True):
    """Funds a unit bought itself (a grant); spent only after allocation, never charged to ancestors."""

    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "unit_id"], ["unit.institution_id", "unit.id"], ondelete="CASCADE"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=128)
    unit_id: str = Field(max_length=128, index=True)
    metric: str = Field(default="cost", max_length=16)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    valid_from: date
    valid_to: date
    chargeback: str | None = None
