"""The one way SSO refuses something: a 4xx with `{"error": {"code", "message", "details"}}`.

Every refusal in a login flow is a client or IdP problem (a bad signature, a
reused ticket, an expired assertion), so none of them may surface as a 500.
Routes here return `error_response` themselves; the dependencies the admin API
uses (`require_session`, `csrf_protect`) raise `SSOError`, which reaches the
client in the same shape once `mount_sso` has installed `sso_error_handler`.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from admin_api.errors import ApiError


class SSOError(ApiError):
    """A refused sign-in: the admin API's error, answered with `Cache-Control: no-store` (see below)."""


def error_response(exc: SSOError) -> JSONResponse:
    body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    # Refusals must not be cached by a proxy or replayed from the browser's cache.
    return JSONResponse(body, status_code=exc.status, headers={"Cache-Control": "no-store"})


async def sso_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SSOError)
    return error_response(exc)


def not_configured(institution: str, method: str) -> SSOError:
    return SSOError(
        404,
        "sso_not_configured",
        f"{method} sign-in is not configured for this institution",
        {"institution": institution, "method": method},
    )


def bad_state(reason: str) -> SSOError:
    return SSOError(400, "sso_state_invalid", "the sign-in attempt is unknown, expired or already used",
                    {"reason": reason})  # fmt: skip
