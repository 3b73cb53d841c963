"""Where the SSO routes find an institution's IdP settings.

The routes only ask `await registry.get(institution_id)`. Two implementations:
`StaticRegistry` (filled by whoever holds the configs: tests, `eduaiq dev`, an
import) and `LoaderRegistry`, which wraps any async loader (e.g. one reading
the persisted `sso:` section from PostgreSQL) with a short cache so a login
burst at 9 a.m. does not become a query per redirect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from admin_api.sso.config import InstitutionSSO


class SSORegistry(Protocol):
    async def get(self, institution_id: str) -> InstitutionSSO | None: ...


class StaticRegistry:
    def __init__(self, configs: Iterable[InstitutionSSO] = ()) -> None:
        self._configs = {c.institution_id: c for c in configs}

    def put(self, config: InstitutionSSO) -> None:
        self._configs[config.institution_id] = config

    def remove(self, institution_id: str) -> None:
        self._configs.pop(institution_id, None)

    async def get(self, institution_id: str) -> InstitutionSSO | None:
        return self._configs.get(institution_id)


Loader = Callable[[str], Awaitable[InstitutionSSO | None]]


class LoaderRegistry:
    """Caches a loader's answers (absent ones too) for `ttl_seconds`; `invalidate` after an import."""

    def __init__(self, loader: Loader, ttl_seconds: float = 30.0) -> None:
        self._loader = loader
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, InstitutionSSO | None]] = {}
        self._lock = asyncio.Lock()

    async def get(self, institution_id: str) -> InstitutionSSO | None:
        hit = self._cache.get(institution_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        async with self._lock:
            hit = self._cache.get(institution_id)
            if hit and hit[0] > time.monotonic():
                return hit[1]
            config = await self._loader(institution_id)
            self._cache[institution_id] = (time.monotonic() + self._ttl, config)
            return config

    def invalidate(self, institution_id: str | None = None) -> None:
        if institution_id is None:
            self._cache.clear()
        else:
            self._cache.pop(institution_id, None)
