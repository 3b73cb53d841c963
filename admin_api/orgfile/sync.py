"""Apply an institution file as a difference against the database, in one transaction.

The file is declarative for what it names. Rows it no longer names are removed,
with three exceptions finance and IT would insist on: units are archived, not
deleted (their usage history stays readable); users are never deleted (the
ledger names them), and an erased user's name, e-mail and SSO subject are never
written back; and API keys are only ever added: a key the database already
has is left exactly as it is, so an import never revokes, un-revokes or extends
one (revoking is an explicit act in the admin API, and the chart re-imports the
file on every upgrade), and a key deleted since it was imported is not made
again, whichever form (`key:` or `key_sha256:`) the file now writes it in and
whichever institution's file names it. Memberships and admin scopes granted by
SSO or through the admin API are not the file's to remove.
Every change is written to the audit log with its before and after (a provider's
literal credential headers redacted: auditors read these entries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import SQLModel, col

from admin_api.orgfile.rows import comparable, desired_rows, without_erased
from admin_api.orgfile.schema import OrgFile
from admin_api.scim.settings_sync import apply_scim_section
from core.models import (
    AdminScope,
    ApiKey,
    AuditEntry,
    BudgetRule,
    Extra,
    Institution,
    Membership,
    ModelOffer,
    Provider,
    RosterSettings,
    Unit,
    User,
)
from core.time import utcnow
from providers.upstream_policy import redact_headers

ORDER: list[type[SQLModel]] = [
    Institution,
    Provider,
    ModelOffer,
    User,
    Unit,
    BudgetRule,
    Extra,
    Membership,
    AdminScope,
    ApiKey,
    RosterSettings,
]


def _never(_: Any) -> bool:
    return False


def _always(_: Any) -> bool:
    return True


def _from_file(row: Any) -> bool:
    return bool(row.source == "file")


# What an import may do to a row the file no longer names.
REMOVABLE: dict[type[SQLModel], Callable[[Any], bool]] = {
    Institution: _never, Provider: _always, ModelOffer: _always, User: _never, Unit: _never,
    BudgetRule: _always, Extra: _always, Membership: _from_file, AdminScope: _from_file, ApiKey: _never,
    RosterSettings: _always,
}  # fmt: skip


def _pk(row: SQLModel) -> tuple[Any, ...]:
    table = type(row).__table__  # type: ignore[attr-defined]
    return tuple(getattr(row, c.name) for c in table.primary_key.columns)


def _label(row: SQLModel) -> str:
    return f"{type(row).__tablename__}:{'/'.join(str(p) for p in _pk(row))}"


@dataclass
class ChangeReport:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.lines)

    def note(self, kind: str, row: SQLModel) -> None:
        bucket = {"create": self.created, "update": self.updated}.get(kind, self.removed)
        name = type(row).__tablename__
        bucket[str(name)] = bucket.get(str(name), 0) + 1
        self.lines.append(f"{kind} {_label(row)}")

    def summary(self) -> str:
        if not self.changed:
            return "no changes"
        parts = []
        for verb, counts in (("created", self.created), ("updated", self.updated), ("removed", self.removed)):
            if counts:
                parts.append(verb + " " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))
        return "; ".join(parts)


async def _existing(
    session: AsyncSession, table: type[SQLModel], inst: str
) -> dict[tuple[Any, ...], SQLModel]:
    column = getattr(table, "id" if table is Institution else "institution_id")
    rows = (await session.execute(select(table).where(column == inst))).scalars().all()
    return {_pk(r): r for r in rows}


# Audit actions after which a key the file names must stay gone (a member's removal deletes their keys).
_KEY_ENDED = ("key.delete", "key.revoke")


async def _ended_hashes(session: AsyncSession, hashes: list[str]) -> set[str]:
    """Those of `hashes` whose key an import once created and the audit log then shows deleted or revoked,
    in any institution. A deleted key's row is gone and its `key.delete` entry names only its id, which
    depends on the form the file wrote the key in (`imported_key_id`); the import's own `org.create` entry
    for the key holds its hash, so hash -> (institution, id) -> ended is what survives a change of form and
    a move to another institution's file."""
    created_hash = col(AuditEntry.after)["key_hash"].as_string()
    created = (
        select(col(AuditEntry.institution_id), col(AuditEntry.target), created_hash.label("key_hash"))
        .where(
            col(AuditEntry.action) == "org.create",
            col(AuditEntry.target).like("api_key:%"),
            created_hash.in_(hashes),
        )
        .subquery()
    )
    ended = aliased(AuditEntry)
    stmt = (
        select(created.c.key_hash)
        .join(
            ended,
            and_(
                col(ended.institution_id) == created.c.institution_id, col(ended.target) == created.c.target
            ),
        )
        .where(col(ended.action).in_(_KEY_ENDED))
        .distinct()
    )
    return set((await session.execute(stmt)).scalars())


async def _new_keys(session: AsyncSession, inst: str, wanted: list[SQLModel]) -> list[SQLModel]:
    """The file's keys the database has never had. A key it has, found by its hash under whatever id (and
    in whichever institution: hashes are unique), keeps its revocation and expiry; a key the audit log shows
    deleted or revoked, by its id here or by its hash anywhere (`_ended_hashes`), is not reinstated."""
    keys = [row for row in wanted if isinstance(row, ApiKey)]
    if not keys:
        return []
    stmt = select(col(ApiKey.key_hash)).where(col(ApiKey.key_hash).in_([k.key_hash for k in keys]))
    known = set((await session.execute(stmt)).scalars())
    fresh = [k for k in keys if k.key_hash not in known]
    if not fresh:
        return []
    labels = {f"api_key:{k.id}" for k in fresh}
    ended_stmt = select(col(AuditEntry.target)).where(
        col(AuditEntry.institution_id) == inst,
        col(AuditEntry.target).in_(labels),
        col(AuditEntry.action).in_(_KEY_ENDED),
    )
    ended = set((await session.execute(ended_stmt)).scalars())
    dead = await _ended_hashes(session, [k.key_hash for k in fresh])
    return [k for k in fresh if f"api_key:{k.id}" not in ended and k.key_hash not in dead]


def _snapshot(row: SQLModel) -> dict[str, Any]:
    """A row as the audit log keeps it. A provider's literal credential headers are redacted as the admin
    API's catalogue edits do (auditors read `org.*` entries and must not learn upstream secrets from them).
    A key's hash stays: it is what `_ended_hashes` finds a deleted key by."""
    snap = row.model_dump(mode="json")
    if isinstance(row, Provider) and isinstance(snap.get("options"), dict):
        snap["options"] = redact_headers(snap["options"])
    return snap


async def apply_org(session: AsyncSession, org: OrgFile, actor: str = "org-import") -> ChangeReport:
    """Write the difference; the caller owns the transaction (commit, or roll back for a dry run)."""
    inst = org.institution.id
    desired = desired_rows(org)
    report = ChangeReport()
    audit: list[AuditEntry] = []

    def record(kind: str, row: SQLModel, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        report.note(kind, row)
        audit.append(AuditEntry(institution_id=inst, actor=actor, action=f"org.{kind}", target=_label(row),
                                before=before, after=after))  # fmt: skip

    existing_by_table: dict[type[SQLModel], dict[tuple[Any, ...], SQLModel]] = {}
    for table in ORDER:
        existing = existing_by_table[table] = await _existing(session, table, inst)
        wanted = desired.tables.get(table, [])
        if table is ApiKey:
            wanted = await _new_keys(session, inst, wanted)
        for row in wanted:
            current = existing.get(_pk(row))
            if current is None:
                session.add(row)
                record("create", row, None, _snapshot(row))
            else:
                before, after = (
                    without_erased(current, comparable(current)),
                    without_erased(current, comparable(row)),
                )
                if before != after:
                    snapshot = _snapshot(current)
                    for name, value in after.items():
                        setattr(current, name, value)
                    if hasattr(current, "updated_at"):
                        current.updated_at = utcnow()
                    record("update", current, snapshot, _snapshot(current))
        await session.flush()

    for table in reversed(ORDER):
        wanted_keys = {_pk(r) for r in desired.tables.get(table, [])}
        for key, row in existing_by_table[table].items():
            if key in wanted_keys:
                continue
            if isinstance(row, Unit) and row.source == "roster":
                continue  # a registrar's class (eduaiq roster import): the roster archives it, not the file
            if isinstance(row, Unit) and not row.archived:
                snapshot = _snapshot(row)
                row.archived = True
                record("archive", row, snapshot, _snapshot(row))
            elif REMOVABLE[table](row):
                record("remove", row, _snapshot(row), None)
                await session.delete(row)
        await session.flush()
    session.add_all(audit)
    await session.flush()
    await apply_scim_section(session, org, actor, report.lines)
    return report
