"""Per-request context: the caller, their permissions, one database session, and the audit trail.

Routes declare what they need with `Depends(reader(scope))` or
`Depends(writer(scope))`. A writer:

* refuses a cookie session without the CSRF token (tokens are exempt: they
  are no ambient credential a cross-site page could borrow);
* takes the institution's row lock first, so two admins editing the same tree
  are applied one after the other and every check (no cycles, models within
  the parent's) holds against the state it writes into;
* records an `AuditEntry` per change in the same transaction as the change;
* after commit, applies the change where it is read: quota's compiled caps in
  Redis and the gateway's catalog (see `publish`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, select

from admin_api.access import Access, load_access
from admin_api.auth import Caller, authenticate
from admin_api.errors import ApiError
from admin_api.publish import publish_changes
from admin_api.refusals import remember_caller
from admin_api.sso import csrf_protect
from admin_api.state import AdminState, admin_state
from core.models import AuditEntry, Institution

SECRET_FIELDS = frozenset({"key_hash", "token_hash"})


def row_label(row: SQLModel) -> str:
    """`<table>:<primary key parts>`, the target format the institution-file import writes too."""
    table = type(row).__table__  # type: ignore[attr-defined]
    pk = "/".join(str(getattr(row, c.name)) for c in table.primary_key.columns)
    return f"{table.name}:{pk}"


def snapshot(row: SQLModel | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: v for k, v in row.model_dump(mode="json").items() if k not in SECRET_FIELDS}


@dataclass
class Ctx:
    caller: Caller
    session: AsyncSession
    state: AdminState
    access: Access
    audit_rows: list[AuditEntry] = field(default_factory=list)
    org_changed: bool = False

    @property
    def institution_id(self) -> str:
        return self.caller.institution_id

    def audit(
        self,
        action: str,
        target: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        *,
        org: bool = True,
    ) -> None:
        """Note one change; `org=True` when the gateway and quota must hear of it."""
        self.audit_rows.append(
            AuditEntry(institution_id=self.institution_id, actor=self.caller.user_id, action=action,
                       target=target, before=before, after=after)
        )  # fmt: skip
        self.org_changed = self.org_changed or org

    def audit_row(
        self, action: str, before: SQLModel | None, after: SQLModel | None, *, org: bool = True
    ) -> None:
        row = after if after is not None else before
        assert row is not None
        self.audit(action, row_label(row), snapshot(before), snapshot(after), org=org)

    async def commit(self) -> None:
        self.session.add_all(self.audit_rows)
        await self.session.commit()
        changed, self.org_changed = self.org_changed, False
        self.audit_rows = []
        if changed:
            await publish_changes(self.state, self.institution_id)


async def _open(request: Request, scope: str, write: bool, lock: bool) -> AsyncIterator[Ctx]:
    state = admin_state(request)
    async with state.sessions() as session:
        caller = await authenticate(request, session, state.settings.pat_max_days)
        remember_caller(request, caller)  # a refusal from here on is audited under this caller
        if not caller.may(scope):
            raise ApiError(403, "token_scope", f"this token lacks the {scope!r} scope", {"needed": scope})
        if write and not caller.via_token:
            await csrf_protect(request)
        if lock:
            await session.execute(
                select(Institution.id).where(Institution.id == caller.institution_id).with_for_update()
            )
        access = await load_access(session, caller)
        yield Ctx(caller, session, state, access)


def reader(scope: str) -> Callable[..., AsyncIterator[Ctx]]:
    async def dependency(request: Request) -> AsyncIterator[Ctx]:
        async for ctx in _open(request, scope, write=False, lock=False):
            yield ctx

    return dependency


def writer(scope: str, *, lock: bool = True) -> Callable[..., AsyncIterator[Ctx]]:
    async def dependency(request: Request) -> AsyncIterator[Ctx]:
        async for ctx in _open(request, scope, write=True, lock=lock):
            yield ctx

    return dependency
