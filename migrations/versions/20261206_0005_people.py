"""people: an index for a person's last use and for the leavers view

Revision ID: 0005_people
Revises: 0004
Create Date: 2026-12-06 12:00:00.000000

The people view shows each person's last use in each unit, and the leavers view finds keys used after their
membership ended or their person was deprovisioned. Both ask the ledger one question per (person, unit):
the latest admission time (`max(started_at)`), or the events admitted after a cutoff. The existing indexes
lead with (institution, unit) or (institution, ended_at), so that was a scan of every event of the unit;
(institution_id, user_id, unit_id, started_at) answers each with one index descent. Building it holds
inserts into usage_event back for its duration: the consumer waits and the events wait in Kafka.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_people"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_usage_event_person_started",
        "usage_event",
        ["institution_id", "user_id", "unit_id", "started_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_event_person_started", table_name="usage_event")
