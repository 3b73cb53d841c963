"""The /api/v1 routes, one module per resource; each module's `router` is mounted by `admin_api.app`."""

from fastapi import APIRouter

from admin_api.routes import (
    admins,
    audit,
    budgets,
    catalog,
    explain,
    extras,
    health,
    keys,
    limits,
    me,
    members,
    models_policy,
    people_views,
    tokens,
    units,
    usage,
)

ROUTERS: list[APIRouter] = [
    health.router,
    me.router,
    units.router,
    budgets.router,
    limits.router,
    extras.router,
    members.router,
    people_views.router,
    admins.router,
    models_policy.router,
    catalog.router,
    keys.router,
    tokens.router,
    explain.router,
    usage.router,
    audit.router,
]
