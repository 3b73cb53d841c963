"""One error shape for the whole control plane: `{"error": {"code", "message", "details"}}`.

Routes raise `ApiError`; FastAPI's own refusals (validation, unknown route,
wrong method) are rewritten into the same shape, so the dashboard and finance
scripts parse one thing. A user's mistake is always a 4xx: a request that
still ends in a database constraint (two admins racing for the same id) is
answered 409, never 500.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from usage.lag import LedgerIncomplete

_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorOut(BaseModel):
    """Every refusal of the admin API."""

    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in {
        400: "malformed request",
        401: "not signed in, or the token is unknown, revoked or expired",
        403: "the caller's roles or the token's scopes do not allow it",
        404: "no such object in the caller's institution",
        409: "conflicts with the current state",
        422: "invalid values (each problem listed by its path)",
    }.items()
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"no {what} {ident!r}", {what: ident})


def forbidden(message: str, **details: Any) -> ApiError:
    return ApiError(403, "forbidden", message, details)


def conflict(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(409, code, message, details)


def invalid(message: str, problems: list[dict[str, Any]] | None = None, code: str = "invalid") -> ApiError:
    return ApiError(422, code, message, {"problems": problems or []})


def error_body(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details or {})}}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_body(exc.status, exc.code, exc.message, exc.details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    details: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {}
    response = error_body(exc.status_code, code, message, details)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _problem(err: dict[str, Any]) -> dict[str, Any]:
    loc = [str(p) for p in err.get("loc", ())]
    return {"path": ".".join(loc), "message": str(err.get("msg", "")), "type": str(err.get("type", ""))}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [_problem(dict(e)) for e in exc.errors()]
    # A body that is not JSON at all is a malformed request, not a well-formed one with wrong values.
    status = 400 if any(p["type"] == "json_invalid" for p in problems) else 422
    message = "; ".join(f"{p['path']}: {p['message']}" for p in problems[:5]) or "invalid request"
    return error_body(status, "invalid" if status == 422 else "bad_request", message, {"problems": problems})


async def _data_error(_: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL refused a value (SQLSTATE class 22, e.g. a NUL byte in text): the input's fault, not ours."""
    assert isinstance(exc, DBAPIError)
    cause = exc.orig
    state = getattr(cause, "sqlstate", None) or getattr(getattr(cause, "__cause__", None), "sqlstate", None)
    if isinstance(state, str) and state.startswith("22"):
        return error_body(400, "bad_request", "a value in the request cannot be stored", {"sqlstate": state})
    raise exc


async def _integrity_error(_: Request, exc: Exception) -> JSONResponse:
    # Only reached when two writers race past the same pre-check; the loser is told to retry.
    return error_body(409, "conflict", "the change conflicts with another change made at the same time", {})


async def _ledger_incomplete(_: Request, exc: Exception) -> JSONResponse:
    """An edit or a read needed budget counters rebuilt from the ledger while the usage pipeline cannot
    vouch for it (Kafka away, consumers behind): the system's state, not the caller's mistake, and it
    passes. Rebuilding anyway would fund requests twice, so the answer is to retry shortly."""
    response = error_body(503, "unavailable", "usage figures are being brought up to date; try again shortly",
                          {"reason": str(exc)})  # fmt: skip
    response.headers["Retry-After"] = "30"
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(DBAPIError, _data_error)
    app.add_exception_handler(LedgerIncomplete, _ledger_incomplete)
