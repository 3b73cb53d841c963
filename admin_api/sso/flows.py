"""Short-lived, single-use state in Redis: login attempts in flight and the replay cache.

A login attempt (SAML AuthnRequest id, OIDC nonce and PKCE verifier, CAS
service URL) is stored under a random flow id that travels through the IdP as
RelayState / state / a service-URL parameter, and is taken with GETDEL so two
deliveries of the same answer cannot both succeed. The replay cache remembers
assertion ids and tickets already accepted (SET NX with the item's lifetime),
so a captured answer is refused even after its flow is gone.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from redis.asyncio import Redis

FLOW_TTL_SECONDS = 600


class FlowStore:
    def __init__(self, redis: Redis, prefix: str = "eduaiq:sso") -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, kind: str, item: str) -> str:
        # Hashed: ids and tickets in Redis keys would let anyone reading a dump finish someone's login.
        return f"{self._prefix}:{kind}:{hashlib.sha256(item.encode()).hexdigest()}"

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(24)

    async def put(self, flow_id: str, data: dict[str, Any], ttl: int = FLOW_TTL_SECONDS) -> None:
        """Store under an id minted first, for messages that must carry the id before we know their own."""
        await self._redis.set(self._key("flow", flow_id), json.dumps(data), ex=ttl)

    async def start(self, data: dict[str, Any], ttl: int = FLOW_TTL_SECONDS) -> str:
        flow_id = self.new_id()
        await self.put(flow_id, data, ttl)
        return flow_id

    async def take(self, flow_id: str) -> dict[str, Any] | None:
        if not flow_id or len(flow_id) > 128:
            return None
        raw = await self._redis.getdel(self._key("flow", flow_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None

    async def first_use(self, namespace: str, item: str, ttl_seconds: int) -> bool:
        """True the first time `item` is presented within `ttl_seconds`, False on every later try."""
        ok = await self._redis.set(
            self._key(f"seen:{namespace}", item), b"1", nx=True, ex=max(1, ttl_seconds)
        )
        return bool(ok)

    async def seen(self, namespace: str, item: str) -> bool:
        return bool(await self._redis.exists(self._key(f"seen:{namespace}", item)))
