"""Liveness and readiness in one: the admin API is useless without PostgreSQL and Redis."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

from admin_api.errors import ApiError
from admin_api.state import admin_state

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    database: str
    redis: str


@router.get("/healthz", response_model=Health, summary="Is the admin API able to serve (no sign-in needed)")
async def healthz(request: Request) -> Health:
    state = admin_state(request)
    checks = {"database": "ok", "redis": "ok"}
    try:
        async with state.engine.connect() as conn:
            await conn.execute(text("select 1"))
    except Exception as exc:  # any failure to reach the database means "not ready", not a crash
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        await state.redis.ping()
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    if any(v != "ok" for v in checks.values()):
        raise ApiError(503, "unavailable", "a backing service is unreachable", checks)
    return Health(status="ok", **checks)
