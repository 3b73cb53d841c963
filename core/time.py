"""Clock helpers: one definition of "now" so tests and code agree on time zones."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Aware UTC: every timestamp column is `timestamptz`, and local time only exists at the edges."""
    return datetime.now(UTC)
