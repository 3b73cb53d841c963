"""Stage 1: an API key becomes a principal (who, charged to which unit).

Keys are looked up by their SHA-256 and the answer, found or not, is cached
per replica for `key_cache_seconds` (at most 5): the hot path touches
PostgreSQL once per key per few seconds, and a revoked or expired key stops
working on every replica within that time. So does the key of a person who was
deprovisioned (they left: SCIM `active: false`) and, after the operator's grace,
the key of a membership that has ended (a course's term). Concurrent misses for
one key share one query.

While PostgreSQL cannot answer (a restart, a failover), a key seen in the last
`_STALE_SECONDS` keeps the answer it had (issue 16 item 13: the data plane stays
ready and serving through a database blip; readiness reports the database as
degraded). Nobody can revoke a key while the database is down; a revocation made
in the last `key_cache_seconds` before the outage applies once it is back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.keys import hash_secret
from core.time import utcnow
from gateway.errors import ApiError

# How old a cached answer may be to stand in for PostgreSQL while it is unreachable.
_STALE_SECONDS = 600.0
_DB_DOWN = (DBAPIError, OSError, TimeoutError)

_QUERY = text(
    """
    select k.id, k.institution_id, k.user_id, k.unit_id, k.expires_at, k.revoked_at, m.role, u.archived,
           m.ends_at, p.deprovisioned_at
    from api_key k
    join membership m on m.institution_id = k.institution_id and m.unit_id = k.unit_id and m.user_id = k.user_id
    join unit u on u.institution_id = k.institution_id and u.id = k.unit_id
    join app_user p on p.institution_id = k.institution_id and p.id = k.user_id
    where k.key_hash = :h
    """
)


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    institution_id: str
    user_id: str
    unit_id: str
    role: str


@dataclass(frozen=True, slots=True)
class _KeyRow:
    principal: Principal
    expires_at: datetime | None
    revoked: bool
    archived: bool
    ends_at: datetime | None  # the membership's end (the key works until the grace after it)
    deprovisioned: bool


def _unauthorized(message: str) -> ApiError:
    # No WWW-Authenticate header: a Basic/Negotiate challenge makes some clients pop up a login dialog.
    return ApiError(401, message, code="invalid_api_key")


def bearer_token(header: str | None) -> str:
    if not header:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <your EduAiQ key>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("the Authorization header must be 'Bearer <your EduAiQ key>'")
    return token


class KeyCache:
    def __init__(self, engine: AsyncEngine, ttl: float, *, grace: float = 0.0) -> None:
        self._engine = engine
        self._ttl = ttl
        self._grace = timedelta(seconds=grace)
        self._entries: dict[str, tuple[float, _KeyRow | None]] = {}
        self._pending: dict[str, asyncio.Future[_KeyRow | None]] = {}

    async def _load(self, digest: str) -> _KeyRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_QUERY, {"h": digest})).first()
        if row is None:
            return None
        principal = Principal(row.id, row.institution_id, row.user_id, row.unit_id, row.role)
        return _KeyRow(principal, row.expires_at, row.revoked_at is not None, bool(row.archived), row.ends_at,
                       row.deprovisioned_at is not None)  # fmt: skip

    async def _lookup(self, digest: str) -> _KeyRow | None:
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(digest)
        if pending is not None:
            return await pending
        future: asyncio.Future[_KeyRow | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            found = await self._load(digest)
            if len(self._entries) > 100_000:
                self._entries.clear()  # bounded: a flood of random keys cannot grow memory forever
            self._entries[digest] = (now + self._ttl, found)
            future.set_result(found)
            return found
        except _DB_DOWN as exc:
            if hit is not None and now - hit[0] < _STALE_SECONDS:  # hit[0]: when it expired
                future.set_result(hit[1])
                return hit[1]
            future.set_exception(exc)
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._pending[digest]
            if not future.done():
                future.cancel()
            elif future.exception() is not None:
                future.exception()  # mark retrieved: other waiters got it

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        row = await self._lookup(hash_secret(token))
        if row is None:
            raise _unauthorized(
                "invalid API key: check the key in your client's settings, or create a new one"
            )
        if row.deprovisioned:
            raise _unauthorized("this API key's owner no longer has access to EduAiQ at this institution")
        if row.revoked:
            raise _unauthorized("this API key has been revoked; create a new one in the EduAiQ dashboard")
        now = utcnow()
        if row.expires_at is not None and row.expires_at <= now:
            raise _unauthorized("this API key has expired; create a new one in the EduAiQ dashboard")
        if row.ends_at is not None and row.ends_at + self._grace <= now:
            raise _unauthorized(
                f"this API key belonged to your membership of {row.principal.unit_id}, which ended on "
                f"{row.ends_at:%Y-%m-%d %H:%M} UTC"
            )
        if row.archived:
            raise ApiError(403, "the unit this key belongs to has been archived", code="unit_archived")
        return row.principal

    def forget(self) -> None:
        self._entries.clear()
