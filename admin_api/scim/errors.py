"""SCIM's error shape (RFC 7644 §3.12) for every refusal under /scim/v2, never the admin API's: an IdP
reads `status`, `scimType` and `detail`, and Entra ID and Okta show `detail` to the operator."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, IntegrityError

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
MEDIA_TYPE = "application/scim+json"


class ScimError(Exception):
    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


def invalid_value(detail: str) -> ScimError:
    return ScimError(400, detail, "invalidValue")


def invalid_syntax(detail: str) -> ScimError:
    return ScimError(400, detail, "invalidSyntax")


def invalid_filter(detail: str) -> ScimError:
    return ScimError(400, detail, "invalidFilter")


def invalid_path(detail: str) -> ScimError:
    return ScimError(400, detail, "invalidPath")


def no_target(detail: str) -> ScimError:
    return ScimError(400, detail, "noTarget")


def not_found(kind: str, ident: str) -> ScimError:
    return ScimError(404, f"{kind} {ident!r} not found")


def uniqueness(detail: str) -> ScimError:
    return ScimError(409, detail, "uniqueness")


def error_response(status: int, detail: str, scim_type: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="scim"'
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def scim_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ScimError)
    return error_response(exc.status, exc.detail, exc.scim_type)


P = ParamSpec("P")


def scim_errors(fn: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """Database refusals a request can still cause become SCIM errors: a race past a uniqueness check is
    409 uniqueness, a value PostgreSQL cannot store (a NUL byte) is 400 invalidValue; never a 500."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await fn(*args, **kwargs)
        except IntegrityError:
            raise uniqueness("the change conflicts with another resource or change") from None
        except DBAPIError as exc:
            cause = exc.orig
            state = getattr(cause, "sqlstate", None) or getattr(
                getattr(cause, "__cause__", None), "sqlstate", None
            )
            if isinstance(state, str) and state.startswith("22"):
                raise invalid_value("a value in the request cannot be stored") from None
            raise

    return wrapper
