"""The usage ledger: the financial truth every counter and report is rebuilt from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel


class UsageEvent(SQLModel, table=True):
    """One row per request, keyed by the event id so a replayed event is a no-op."""

    __tablename__ = "usage_event"
    __table_args__ = (
        Index("ix_usage_event_inst_ended", "institution_id", "ended_at"),
        Index("ix_usage_event_inst_unit_ended", "institution_id", "unit_id", "ended_at"),
        # A person's last use in a unit, and a key's use after its membership ended (admin_api/leavers.py):
        # one index descent per (person, unit) instead of a scan of the unit's events (migration 0005).
        Index("ix_usage_event_person_started", "institution_id", "user_id", "unit_id", "started_at"),
    )

    event_id: str = Field(primary_key=True, max_length=36)
    schema_version: int = 1
    request_id: str = Field(max_length=64)
    institution_id: str = Field(max_length=64)
    started_at: datetime
    ended_at: datetime
    user_id: str | None = Field(default=None, max_length=128)
    key_id: str | None = Field(default=None, max_length=32)
    unit_id: str | None = Field(default=None, max_length=128)
    path: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    purpose: str = Field(default="other", max_length=16)
    provider_id: str | None = None
    deployment_id: str | None = None
    model_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    cost_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    overage_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    latency_ms: int = 0
    status: str = Field(
        max_length=24
    )  # ok | clamped | refused | upstream_error | client_abort | bad_request | unsettled
    binding_unit: str | None = None
    # How the charge was funded, exactly as quota/ applied it: what `quota rebuild` replays.
    funding: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    extras_paid: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ingested_at: datetime | None = None


class UsageRollup(SQLModel, table=True):
    """Hourly and daily sums per unit, model and user, kept in the same transaction as the events."""

    __tablename__ = "usage_rollup"

    institution_id: str = Field(primary_key=True, max_length=64)
    grain: str = Field(primary_key=True, max_length=8)  # hour | day
    bucket_start: datetime = Field(primary_key=True)
    unit_id: str = Field(primary_key=True, max_length=128)
    model_id: str = Field(primary_key=True, max_length=128)
    user_id: str = Field(primary_key=True, max_length=128)
    purpose: str = Field(default="other", max_length=16)
    requests: int = 0
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    image_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cached_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cost_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class ExportSnapshot(SQLModel, table=True):
    """The bytes of an export of a closed period, kept so it reproduces byte for byte forever."""

    __tablename__ = "export_snapshot"

    institution_id: str = Field(primary_key=True, max_length=64)
    period: str = Field(primary_key=True, max_length=16)
    scope_unit: str = Field(primary_key=True, max_length=128)
    format: str = Field(primary_key=True, max_length=8)
    sha256: str = Field(max_length=64)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime
