"""Rows a test needs to exist before it calls the API, written straight to the database.

Used where a test must not depend on the route it is testing (the
authorization matrix gives each allowed caller its own fresh object to delete,
so one caller's success cannot turn into the next caller's 404).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlmodel import SQLModel, select

from core.keys import hash_secret, new_id, new_secret
from core.models import (
    AdminScope,
    ApiKey,
    AuditEntry,
    Extra,
    Membership,
    ModelOffer,
    PersonalAccessToken,
    Provider,
    Unit,
    User,
)
from tests.admin_api.conftest import Env


async def add(env: Env, *rows: SQLModel) -> None:
    async with env.db() as session, session.begin():
        for row in rows:
            session.add(row)
            await session.flush()


async def fresh_user(env: Env) -> str:
    uid = env.fresh("user")
    await add(env, User(institution_id=env.inst, id=uid, email=f"{uid}@stateu.edu", name=uid))
    return uid


async def fresh_unit(env: Env, parent: str) -> str:
    uid = env.fresh("unit")
    await add(
        env, Unit(institution_id=env.inst, id=uid, parent_id=parent, kind="course", name=uid, position=99)
    )
    return uid


async def fresh_member(env: Env, unit: str, role: str = "student") -> str:
    uid = await fresh_user(env)
    await add(env, Membership(institution_id=env.inst, unit_id=unit, user_id=uid, role=role))
    return uid


async def fresh_scope(env: Env, unit: str, role: str) -> str:
    uid = await fresh_user(env)
    await add(env, AdminScope(institution_id=env.inst, unit_id=unit, user_id=uid, role=role))
    return uid


async def fresh_extra(env: Env, unit: str) -> str:
    xid = env.fresh("extra")
    await add(env, Extra(institution_id=env.inst, id=xid, unit_id=unit, metric="cost", amount=5_000_000,
                         valid_from=date(2026, 1, 1), valid_to=date(2027, 12, 31)))  # fmt: skip
    return xid


async def fresh_provider(env: Env) -> str:
    pid = env.fresh("prov")
    await add(env, Provider(institution_id=env.inst, id=pid, type="openai-compatible", base_url="http://127.0.0.1:9/v1",
                            position=50))  # fmt: skip
    return pid


async def fresh_model(env: Env, provider: str = "campus-vllm") -> str:
    mid = env.fresh("model")
    await add(env, ModelOffer(institution_id=env.inst, provider_id=provider, id=mid, upstream=mid, input_price=1000,
                              output_price=2000, position=900))  # fmt: skip
    return mid


async def fresh_key(env: Env, user: str, unit: str) -> tuple[str, str]:
    secret = new_secret()
    kid = new_id()
    await add(env, ApiKey(id=kid, key_hash=hash_secret(secret), prefix=secret[:16], institution_id=env.inst,
                          user_id=user, unit_id=unit, name="fresh"))  # fmt: skip
    return kid, secret


async def fresh_token(env: Env, user: str) -> str:
    secret = new_secret("pat-")
    tid = new_id()
    await add(env, PersonalAccessToken(id=tid, token_hash=hash_secret(secret), prefix=secret[:12],
                                       institution_id=env.inst, user_id=user, scopes=["usage:read"]))  # fmt: skip
    return tid


async def get_row(env: Env, table: type[SQLModel], *pk: Any) -> Any:
    async with env.db() as session:
        return await session.get(table, pk if len(pk) > 1 else pk[0])


async def audit_entries(env: Env, action_prefix: str = "") -> list[AuditEntry]:
    """The test's own entries: not the import's, and not the sign-ins of `env.login` unless asked for."""
    async with env.db() as session:
        stmt = select(AuditEntry).where(
            AuditEntry.institution_id == env.inst, AuditEntry.actor != "org-import"
        )
        rows = (await session.execute(stmt.order_by(AuditEntry.id))).scalars().all()  # type: ignore[arg-type]
    return [
        r
        for r in rows
        if r.action.startswith(action_prefix)
        and (r.action != "sso.login" or action_prefix.startswith("sso."))
    ]
