"""After a committed change: make every gateway replica apply it to its next request.

Two messages. Quota's compile writes the new caps into Redis under a fresh
compile token and publishes quota's invalidation (a replica that has not heard
it yet still cannot reserve against old caps: the token check refuses). Then
`PUBLISH eduaiq:catalog <institution>` makes the gateways reload units, model
policy and providers.

Compiles of one institution run one at a time (a PostgreSQL advisory lock) and
each reads the database after its own commit, so the last compile installed
always reflects every committed change: two admins saving at once can never
leave the older tree in Redis.

When Redis holds no compiled budget at all (new, or it lost its data), quota's
ledger loader rebuilds counters and caps together; compiling caps alone would
forget what was already spent.
"""

from __future__ import annotations

import contextlib
import hashlib

from redis.exceptions import RedisError
from sqlalchemy import text

from admin_api.errors import ApiError
from admin_api.state import AdminState
from core.channels import CATALOG_CHANNEL
from quota import InstitutionNotLoaded
from quota.sources import load_spec


def _lock_key(institution_id: str) -> int:
    digest = hashlib.sha256(f"eduaiq-compile\0{institution_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def compile_institution(state: AdminState, institution_id: str) -> None:
    async with state.sessions() as session, session.begin():
        await session.execute(text("select pg_advisory_xact_lock(:k)"), {"k": _lock_key(institution_id)})
        spec = await load_spec(session, institution_id)
        if await state.quota.is_compiled(institution_id):
            with contextlib.suppress(InstitutionNotLoaded):  # lost since (a restart): rebuilt below
                await state.quota.compile(spec, existing=True)
                return
        state.quota.invalidate(institution_id)
        await state.quota.snapshot(institution_id)  # the loader rebuilds from PostgreSQL and the ledger


async def publish_changes(state: AdminState, institution_id: str) -> None:
    try:
        await compile_institution(state, institution_id)
        await state.redis.publish(CATALOG_CHANNEL, institution_id)
    except (RedisError, OSError) as exc:
        raise ApiError(
            503,
            "not_applied",
            "the change is saved but the gateways could not be told yet; it applies once Redis is back",
            {"reason": str(exc)},
        ) from None
