"""Clock helpers: one definition of "now" so tests and code agree on time zones."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC: every timestamp column is `timestamp without time zone` holding UTC."""
    return datetime.now(UTC).replace(tzinfo=None)
