"""The institution file's `scim:` section on import: stored in `ScimSettings` (its presence is what makes
SCIM the authority for a person's SSO-granted memberships, reconcile.py), and, when it changed, every
person in a SCIM group is reconciled against the new mapping in the same transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.scim.reconcile import everyone_in_groups, reconcile
from core.models import AuditEntry, ScimSettings
from core.time import utcnow

if TYPE_CHECKING:
    from admin_api.orgfile.schema import OrgFile


async def apply_scim_section(session: AsyncSession, org: OrgFile, actor: str, lines: list[str]) -> None:
    inst = org.institution.id
    row = await session.get(ScimSettings, inst, with_for_update=True)
    wanted = org.scim.model_dump(mode="json", exclude_none=True) if org.scim is not None else None
    before = row.config if row is not None else None
    if wanted == before:
        return
    if wanted is None:
        assert row is not None
        await session.delete(row)
    elif row is None:
        session.add(ScimSettings(institution_id=inst, config=wanted))
    else:
        row.config, row.updated_at = wanted, utcnow()
    kind = "create" if before is None else "remove" if wanted is None else "update"
    lines.append(f"{kind} scim_settings:{inst}")
    session.add(AuditEntry(institution_id=inst, actor=actor, action=f"org.{kind}", target=f"scim_settings:{inst}",
                           before=before, after=wanted))  # fmt: skip
    await session.flush()
    await reconcile(session, inst, await everyone_in_groups(session, inst), actor)
