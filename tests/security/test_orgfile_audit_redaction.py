"""The institution file's import writes provider rows to the audit log redacted, as the admin API does.

Auditors read `org.*` entries; a provider's literal credential header (stored before such headers were
refused, or accepted by a caller that parses the file without the operator's policy) must not reach them
through the before/after snapshots of the import's create, update or remove.
"""

from __future__ import annotations

import json

from sqlalchemy import update
from sqlmodel import col, select

from admin_api.orgfile import apply_org, parse_document
from core.models import AuditEntry, Provider
from tests.admin_api.conftest import Env, env, settings, stateu_document  # noqa: F401  (fixtures)

LEGACY = "Bearer sk-legacy-upstream-secret-0123456789"
LITERAL = "sk-literal-upstream-secret-9876543210"


async def _import(env: Env, doc: dict[str, object]) -> None:  # noqa: F811
    async with env.db() as session, session.begin():
        await apply_org(session, parse_document(doc))


async def test_import_audit_snapshots_redact_provider_credential_headers(env: Env) -> None:  # noqa: F811
    async with env.db() as session, session.begin():  # a literal stored before the rule existed
        await session.execute(
            update(Provider)
            .where(col(Provider.institution_id) == env.inst, col(Provider.id) == "openai")
            .values(options={"headers": {"Authorization": LEGACY}})
        )
    doc = stateu_document(env.inst)
    extra = {"id": "extra-upstream", "type": "openai", "base_url": "https://api.example.com/v1",
             "api_key_env": "OPENAI_API_KEY", "headers": {"X-Api-Key": LITERAL, "X-Tenant": "stateu"}}  # fmt: skip
    doc["providers"].append(extra)
    await _import(env, doc)  # openai updated (the legacy header dropped), extra-upstream created
    doc["providers"].remove(extra)
    await _import(env, doc)  # extra-upstream removed

    async with env.db() as session:
        stmt = select(AuditEntry).where(
            col(AuditEntry.institution_id) == env.inst, col(AuditEntry.target).like("provider:%")
        )
        entries = (await session.execute(stmt)).scalars().all()
    seen = {(e.action, e.target) for e in entries}
    assert {("org.update", f"provider:{env.inst}/openai"), ("org.create", f"provider:{env.inst}/extra-upstream"),
            ("org.remove", f"provider:{env.inst}/extra-upstream")} <= seen  # fmt: skip
    logged = json.dumps([[e.before, e.after] for e in entries])
    assert LEGACY not in logged and "sk-legacy-upstream-secret" not in logged, (
        "a stored credential was audited"
    )
    assert LITERAL not in logged, "a literal credential header was audited"
    assert '"X-Tenant": "stateu"' in logged  # headers that carry no credential stay readable
