"""OneRoster 1.2 CSV import: a registrar's classes, people and enrollments as course units, users and
memberships (docs/oneroster.md).

`source` reads a folder or zip within bounds, `parse` checks each file, `plan` merges them with what earlier
imports stored and compares the result with the database, `apply` writes the difference in bulk. The whole
set is checked before anything is written: one problem and nothing changes, every problem is listed by file,
line and column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.oneroster.apply import apply_plan
from admin_api.oneroster.parse import Problem, parse_set
from admin_api.oneroster.plan import build_plan
from admin_api.oneroster.source import Limits, SourceError, read_set
from admin_api.oneroster.state import UnknownInstitution, load_current
from core.models import AuditEntry
from core.time import utcnow

__all__ = ["ImportResult", "Limits", "Problem", "RosterRefused", "SourceError", "UnknownInstitution",
           "import_roster", "read_set"]  # fmt: skip


class RosterRefused(Exception):
    """The set is refused whole; `problems` lists each one (file, line, column, message)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


@dataclass
class ImportResult:
    institution: str
    modes: dict[str, str]  # file -> bulk | delta
    rows: dict[str, int]  # file -> rows read
    changes: dict[str, int]
    linked_users: int
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(self.changes.values())

    def summary(self) -> str:
        if not self.changed:
            return "no changes: the database already matches this roster"
        done = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in self.changes.items() if n)
        return done + (f"; {self.linked_users} existing people linked" if self.linked_users else "")


async def import_roster(
    session: AsyncSession,
    institution_id: str,
    files: dict[str, bytes],
    *,
    actor: str = "roster-import",
    now: datetime | None = None,
) -> ImportResult:
    """Check the set and write the difference inside the caller's transaction (commit, or roll back for a
    dry run). Raises RosterRefused, having written nothing, when any problem is found. An import that
    changes something writes one audit entry with its counts; one that changes nothing writes nothing."""
    now = now or utcnow()
    parsed = parse_set(files)
    current = await load_current(session, institution_id)
    plan = build_plan(parsed, current, now)
    if plan.problems:
        raise RosterRefused(plan.problems)
    result = ImportResult(
        institution=institution_id,
        modes={f.spec.name: f.mode for f in parsed.files.values()},
        rows={f.spec.name: len(f.rows) for f in parsed.files.values()},
        changes=plan.changes,
        linked_users=plan.linked_users,
        skipped=dict(plan.skipped),
    )
    if plan.changed:
        await apply_plan(session, institution_id, plan, now)
        source = {k: v for k, v in parsed.manifest.items() if k.startswith("source.")}
        session.add(AuditEntry(institution_id=institution_id, actor=actor, action="roster.import",
                               target=f"roster:{institution_id}", before=None,
                               after={"files": result.modes, "rows": result.rows, **result.changes,
                                      "linked_users": plan.linked_users, "skipped": result.skipped, **source}))  # fmt: skip
        await session.flush()
    return result
