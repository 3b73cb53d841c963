"""Refused admin requests (403) go to the audit log: who tried what, on which unit, and why it was refused.

A person probing for what they may do, or a leaked token being tried against routes its scopes do not
cover, shows up where auditors look. Only callers who authenticated are recorded (an anonymous request is
401, not 403, and names nobody); the entry belongs to the unit the refusal names, else to the
institution, as every audit entry does (routes/audit.py). Writing it is its own transaction, after the
request's own session has ended, and a failure to write it never changes the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from admin_api.auth import Caller
from admin_api.errors import ApiError
from admin_api.sso import SSOError
from admin_api.state import admin_state
from core.models import AuditEntry

log = logging.getLogger(__name__)

CALLER_STATE = "eduaiq_caller"  # request.state attribute set by admin_api.context once authenticated
Handler = Callable[[Request, Exception], Awaitable[Response]]


def remember_caller(request: Request, caller: Caller) -> None:
    setattr(request.state, CALLER_STATE, caller)


async def record_refusal(request: Request, code: str, details: dict[str, Any]) -> None:
    caller = getattr(request.state, CALLER_STATE, None)
    if not isinstance(caller, Caller):
        return
    unit = details.get("unit")
    entry = AuditEntry(institution_id=caller.institution_id, actor=caller.user_id, action="access.denied",
                       target=f"request:{request.method} {request.url.path}", before=None,
                       after={"method": request.method, "path": request.url.path, "code": code,
                              "unit_id": unit if isinstance(unit, str) else None, "via": caller.method,
                              "token_id": caller.token_id})  # fmt: skip
    try:
        async with admin_state(request).sessions() as session:
            session.add(entry)
            await session.commit()
    except Exception:
        log.exception("could not write the audit entry of a refused request")


def _audited(handler: Handler) -> Handler:
    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError) and exc.status == 403:  # SSOError is an ApiError
            await record_refusal(request, exc.code, dict(exc.details or {}))
        return await handler(request, exc)

    return handle


def audit_refusals(app: FastAPI) -> None:
    """Wrap the installed handlers of the two refusal types (call after both are installed)."""
    for kind in (ApiError, SSOError):
        handler = app.exception_handlers[kind]
        app.add_exception_handler(kind, _audited(handler))  # type: ignore[arg-type]
