"""Browser sessions after SSO: an opaque id in a signed cookie, the session itself in Redis.

The cookie holds `<random id>.<HMAC>`; Redis holds the session under the id's
SHA-256, with the session's lifetime as TTL, so expiry needs no sweeper and a
Redis dump holds no usable cookie. Logging out deletes the key: the session is
gone everywhere at once, which a self-contained signed cookie could not do.
The CSRF token is an HMAC of the session id under a separate derived key: the
SPA reads it from a non-HttpOnly cookie (or /auth/session) and echoes it in a
header, and nothing but this server can compute it for a given session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from core.time import utcnow

log = logging.getLogger(__name__)

Method = Literal["saml", "oidc", "cas", "dev"]


class Principal(BaseModel):
    """Who is signed in. Roles are not copied here: read them from the database when deciding."""

    model_config = ConfigDict(frozen=True)

    institution_id: str
    user_id: str
    subject: str | None
    email: str | None
    name: str | None
    method: Method
    affiliations: list[str] = []
    authenticated_at: datetime
    expires_at: datetime


class SessionRecord(BaseModel):
    principal: Principal
    # What a later logout needs from the IdP's answer: SAML NameID and SessionIndex, the OIDC id_token.
    logout: dict[str, str] = {}


def resolve_secret(secret: str | None, dev_mode: bool) -> str:
    """The configured secret; in dev mode a fresh random one (sessions then die with the process)."""
    if secret:
        if len(secret) < 32 and not dev_mode:
            raise ValueError("EDUAIQ_SESSION_SECRET must be at least 32 characters")
        return secret
    if not dev_mode:
        raise ValueError("EDUAIQ_SESSION_SECRET is not set (required outside dev mode)")
    log.warning("EDUAIQ_SESSION_SECRET is not set: using an ephemeral secret, sessions end on restart")
    return secrets.token_urlsafe(48)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SessionStore:
    def __init__(self, redis: Redis, secret: str, ttl_seconds: int, prefix: str = "eduaiq:sso") -> None:
        master = secret.encode()
        self._cookie_key = hmac.new(master, b"eduaiq session cookie", hashlib.sha256).digest()
        self._csrf_key = hmac.new(master, b"eduaiq csrf token", hashlib.sha256).digest()
        self._redis = redis
        self.ttl_seconds = ttl_seconds
        self._prefix = prefix

    def _mac(self, key: bytes, data: str) -> str:
        return _b64(hmac.new(key, data.encode(), hashlib.sha256).digest())

    def _key(self, sid: str) -> str:
        return f"{self._prefix}:session:{hashlib.sha256(sid.encode()).hexdigest()}"

    def cookie_value(self, sid: str) -> str:
        return f"{sid}.{self._mac(self._cookie_key, sid)}"

    def sid_from_cookie(self, value: str | None) -> str | None:
        """The session id if the cookie is one this server minted; forged or mangled values never reach Redis."""
        if not value or len(value) > 256:
            return None
        sid, dot, mac = value.rpartition(".")
        if not dot or not sid:
            return None
        if not hmac.compare_digest(mac, self._mac(self._cookie_key, sid)):
            return None
        return sid

    def csrf_token(self, sid: str) -> str:
        return self._mac(self._csrf_key, sid)

    async def create(
        self,
        *,
        institution_id: str,
        user_id: str,
        method: Method,
        subject: str | None = None,
        email: str | None = None,
        name: str | None = None,
        affiliations: list[str] | None = None,
        logout: dict[str, str] | None = None,
        not_after: datetime | None = None,
    ) -> tuple[str, SessionRecord]:
        """A new session (a new id on every sign-in: no fixation); returns its id and record."""
        now = utcnow()
        expires = now + timedelta(seconds=self.ttl_seconds)
        if not_after is not None and not_after < expires:
            expires = not_after  # the IdP said the session must end sooner
        ttl = int((expires - now).total_seconds())
        if ttl < 1:
            raise ValueError("session would expire immediately")
        principal = Principal(
            institution_id=institution_id, user_id=user_id, subject=subject, email=email, name=name,
            method=method, affiliations=affiliations or [], authenticated_at=now, expires_at=expires,
        )  # fmt: skip
        record = SessionRecord(principal=principal, logout=logout or {})
        sid = secrets.token_urlsafe(32)
        await self._redis.set(self._key(sid), record.model_dump_json(), ex=ttl)
        if method == "saml" and logout and logout.get("name_id"):
            await self._index_saml(
                institution_id, logout["name_id"], logout.get("session_index", ""), sid, ttl
            )
        return sid, record

    async def load(self, sid: str) -> SessionRecord | None:
        raw = await self._redis.get(self._key(sid))
        if raw is None:
            return None
        record = SessionRecord.model_validate_json(raw)
        if record.principal.expires_at <= utcnow():
            return None
        return record

    async def destroy(self, sid: str) -> SessionRecord | None:
        raw = await self._redis.getdel(self._key(sid))
        return SessionRecord.model_validate_json(raw) if raw is not None else None

    def _saml_index(self, institution_id: str, name_id: str) -> str:
        digest = hashlib.sha256(f"{institution_id}\0{name_id}".encode()).hexdigest()
        return f"{self._prefix}:saml-subject:{digest}"

    async def _index_saml(
        self, institution_id: str, name_id: str, session_index: str, sid: str, ttl: int
    ) -> None:
        """IdP-initiated logout names a NameID and SessionIndex, not our session id: remember the link."""
        key = self._saml_index(institution_id, name_id)
        entry = json.dumps({"key": self._key(sid), "session_index": session_index})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, entry)
            # No session outlives the configured TTL, so the index never needs to outlive it either.
            pipe.expire(key, max(ttl, self.ttl_seconds))
            await pipe.execute()

    async def destroy_saml(self, institution_id: str, name_id: str, session_indexes: list[str]) -> int:
        """End this subject's sessions (only those of the given IdP sessions, when the IdP names them)."""
        key = self._saml_index(institution_id, name_id)
        ended = 0
        for raw in await self._redis.smembers(key):
            entry: dict[str, Any] = json.loads(raw)
            if session_indexes and entry.get("session_index") not in session_indexes:
                continue
            ended += int(await self._redis.delete(entry["key"]))
            await self._redis.srem(key, raw)
        return ended
