"""What one admin API process holds: settings, the database, Redis and the quota engine.

Built once by `create_app` and found by routes on `app.state`; engines and
clients connect lazily, so building the app touches no server.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.settings import Settings
from quota import QuotaEngine


@dataclass
class AdminState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    quota: QuotaEngine  # with a ledger loader: rebuilds counters itself when Redis lost them

    async def close(self) -> None:
        await self.quota.close()
        await self.redis.aclose()
        await self.engine.dispose()


def admin_state(request: Request) -> AdminState:
    state = request.app.state.eduaiq_admin
    assert isinstance(state, AdminState)
    return state
