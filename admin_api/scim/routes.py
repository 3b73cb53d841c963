"""The /scim/v2 routes: discovery, Users and Groups. Each request is authenticated by the institution's
SCIM token (tokens.py) and runs in one transaction; writes take the institution's row lock first, as the
admin API's writers do, so two pushes for the same institution apply one after the other. Memberships a
write changed reach quota and the gateways after commit (`publish_changes`). Every refusal is a SCIM
error body (errors.py) with Content-Type application/scim+json.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from admin_api.errors import ApiError
from admin_api.publish import publish_changes
from admin_api.scim import groups as group_ops
from admin_api.scim import users as user_ops
from admin_api.scim.errors import (
    MEDIA_TYPE,
    ScimError,
    invalid_filter,
    invalid_syntax,
    invalid_value,
    not_found,
    scim_error_handler,
    scim_errors,
)
from admin_api.scim.filter import parse_filter
from admin_api.scim.patch import apply_patch
from admin_api.scim.query import to_sql
from admin_api.scim.reconcile import RECONCILED
from admin_api.scim.resources import group_resource, parse_group, parse_user, project, user_resource
from admin_api.scim.schemas import (
    LIST,
    MAX_BODY_BYTES,
    MAX_RESULTS,
    all_schemas,
    resource_types,
    service_provider_config,
)
from admin_api.scim.tokens import ScimCaller, authenticate
from admin_api.state import admin_state
from core.models import Institution, ScimGroup, ScimUser, User

PREFIX = "/scim/v2"
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX


def scim_json(body: Any, status: int = 200, location: str | None = None) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if location:
        headers["Location"] = location
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


@asynccontextmanager
async def _open(request: Request, write: bool) -> AsyncIterator[tuple[AsyncSession, ScimCaller]]:
    state = admin_state(request)
    async with state.sessions() as session:
        caller = await authenticate(request, session)
        if write:  # the body is read (and bounded) before the lock: a slow client holds no institution up
            await _raw_body(request)
            await session.execute(
                select(Institution.id).where(col(Institution.id) == caller.institution_id).with_for_update()
            )
        yield session, caller


async def _commit(request: Request, session: AsyncSession, caller: ScimCaller) -> None:
    """Commit, then tell quota and the gateways when memberships or scopes changed."""
    changed = bool(session.info.pop(RECONCILED, False))
    await session.commit()
    if changed:
        try:
            await publish_changes(admin_state(request), caller.institution_id)
        except ApiError as exc:
            raise ScimError(503, exc.message) from None


async def _raw_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise ScimError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ScimError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    return raw


async def _body(request: Request) -> Any:
    raw = await _raw_body(request)  # Starlette keeps the body once read
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid_syntax("the body is not JSON") from None


def _params(request: Request) -> dict[str, Any]:
    """The query's listing parameters (GET), with SCIM's names."""
    return dict(request.query_params)


async def _search_params(request: Request) -> dict[str, Any]:
    """A SearchRequest body (POST .../.search) as the same parameters."""
    body = await _body(request)
    if not isinstance(body, dict):
        raise invalid_syntax("a search is a SearchRequest object")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("attributes", "excludedAttributes") and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if key in ("filter", "attributes", "excludedAttributes", "startIndex", "count") and value is not None:
            out[key] = value
    return out


def _paging(params: dict[str, Any]) -> tuple[int, int]:
    try:
        start = int(params.get("startIndex", 1))
        count = int(params.get("count", MAX_RESULTS))
    except (TypeError, ValueError):
        raise invalid_value("startIndex and count are integers") from None
    return max(start, 1), min(max(count, 0), MAX_RESULTS)


def _filter_text(params: dict[str, Any]) -> str | None:
    text = params.get("filter")
    if text is not None and not isinstance(text, str):
        raise invalid_filter("filter is a string")
    return text


def _list(resources: list[dict[str, Any]], total: int, start: int) -> JSONResponse:
    return scim_json({"schemas": [LIST], "totalResults": total, "startIndex": start,
                      "itemsPerPage": len(resources), "Resources": resources})  # fmt: skip


def _projected(params: Any, resource: dict[str, Any]) -> dict[str, Any]:
    return project(resource, params.get("attributes"), params.get("excludedAttributes"))


# --- discovery ---------------------------------------------------------------------------------------


@router.get("/ServiceProviderConfig")
@scim_errors
async def get_spc(request: Request) -> Response:
    async with _open(request, write=False):
        return scim_json(service_provider_config(_base(request)))


@router.get("/ResourceTypes")
@scim_errors
async def list_resource_types(request: Request) -> Response:
    async with _open(request, write=False):
        types = resource_types(_base(request))
        return _list(types, len(types), 1)


@router.get("/ResourceTypes/{type_id}")
@scim_errors
async def get_resource_type(request: Request, type_id: str) -> Response:
    async with _open(request, write=False):
        found = next((t for t in resource_types(_base(request)) if t["id"] == type_id), None)
        if found is None:
            raise not_found("ResourceType", type_id)
        return scim_json(found)


@router.get("/Schemas")
@scim_errors
async def list_schemas(request: Request) -> Response:
    async with _open(request, write=False):
        schemas = all_schemas(_base(request))
        return _list(schemas, len(schemas), 1)


@router.get("/Schemas/{schema_id}")
@scim_errors
async def get_schema(request: Request, schema_id: str) -> Response:
    async with _open(request, write=False):
        found = next((s for s in all_schemas(_base(request)) if s["id"] == schema_id), None)
        if found is None:
            raise not_found("Schema", schema_id)
        return scim_json(found)


# --- Users -------------------------------------------------------------------------------------------


async def _user_doc(
    request: Request, session: AsyncSession, inst: str, user: User, row: ScimUser | None
) -> dict[str, Any]:
    groups = await user_ops.groups_of(session, inst, [user.id])
    return user_resource(user, row, groups[user.id], _base(request))


@router.get("/Users")
@scim_errors
async def list_users(request: Request) -> Response:
    return await _users(request, _params(request))


@router.post("/Users/.search")
@scim_errors
async def search_users(request: Request) -> Response:
    return await _users(request, None)


async def _users(request: Request, query: dict[str, Any] | None) -> Response:
    """A list (GET, `query` from the URL) or a search (POST .../.search, `query` None: from the body)."""
    async with _open(request, write=False) as (session, caller):
        params = query if query is not None else await _search_params(request)
        start, count = _paging(params)
        inst = caller.institution_id
        stmt = (
            select(User, ScimUser)
            .outerjoin(
                ScimUser,
                (col(ScimUser.institution_id) == col(User.institution_id))
                & (col(ScimUser.user_id) == col(User.id)),
            )
            .where(col(User.institution_id) == inst, col(ScimUser.deleted_at).is_(None))
        )
        text = _filter_text(params)
        if text is not None:
            stmt = stmt.where(to_sql(parse_filter(text), "User"))
        total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
        rows = (
            (await session.execute(stmt.order_by(col(User.id)).offset(start - 1).limit(count))).all()
            if count
            else []
        )
        groups = await user_ops.groups_of(session, inst, [u.id for u, _ in rows])
        base = _base(request)
        docs = [_projected(params, user_resource(u, r, groups[u.id], base)) for u, r in rows]
        return _list(docs, total, start)


@router.post("/Users")
@scim_errors
async def create_user(request: Request) -> Response:
    async with _open(request, write=True) as (session, caller):
        data = parse_user(await _body(request))
        user = await user_ops.create_user(session, caller, data)
        user, row = await user_ops.load_user(session, caller.institution_id, user.id)
        doc = await _user_doc(request, session, caller.institution_id, user, row)
        await _commit(request, session, caller)
        return scim_json(doc, 201, doc["meta"]["location"])


@router.get("/Users/{user_id}")
@scim_errors
async def get_user(request: Request, user_id: str) -> Response:
    async with _open(request, write=False) as (session, caller):
        user, row = await user_ops.load_user(session, caller.institution_id, user_id)
        return scim_json(
            _projected(
                request.query_params, await _user_doc(request, session, caller.institution_id, user, row)
            )
        )


@router.put("/Users/{user_id}")
@scim_errors
async def replace_user(request: Request, user_id: str) -> Response:
    async with _open(request, write=True) as (session, caller):
        body = await _body(request)
        inst = caller.institution_id
        user, row = await user_ops.load_user(session, inst, user_id, lock=True)
        await user_ops.replace_user(session, caller, user, row, parse_user(body))
        user, row = await user_ops.load_user(session, inst, user_id)
        doc = await _user_doc(request, session, inst, user, row)
        await _commit(request, session, caller)
        return scim_json(doc)


@router.patch("/Users/{user_id}")
@scim_errors
async def patch_user(request: Request, user_id: str) -> Response:
    async with _open(request, write=True) as (session, caller):
        body = await _body(request)
        inst = caller.institution_id
        user, row = await user_ops.load_user(session, inst, user_id, lock=True)
        current = await _user_doc(request, session, inst, user, row)
        patched = apply_patch(current, body)
        data = parse_user(patched)
        await user_ops.replace_user(session, caller, user, row, data)
        user, row = await user_ops.load_user(session, inst, user_id)
        doc = await _user_doc(request, session, inst, user, row)
        await _commit(request, session, caller)
        return scim_json(doc)


@router.delete("/Users/{user_id}")
@scim_errors
async def delete_user(request: Request, user_id: str) -> Response:
    async with _open(request, write=True) as (session, caller):
        user, row = await user_ops.load_user(session, caller.institution_id, user_id, lock=True)
        await user_ops.delete_user(session, caller, user, row)
        await _commit(request, session, caller)
        return Response(status_code=204)


# --- Groups ------------------------------------------------------------------------------------------


async def _group_doc(request: Request, session: AsyncSession, inst: str, group: ScimGroup) -> dict[str, Any]:
    members = await group_ops.members_of(session, inst, [group.id])
    return group_resource(group, members[group.id], _base(request))


@router.get("/Groups")
@scim_errors
async def list_groups(request: Request) -> Response:
    return await _groups(request, _params(request))


@router.post("/Groups/.search")
@scim_errors
async def search_groups(request: Request) -> Response:
    return await _groups(request, None)


async def _groups(request: Request, query: dict[str, Any] | None) -> Response:
    """A list (GET, `query` from the URL) or a search (POST .../.search, `query` None: from the body)."""
    async with _open(request, write=False) as (session, caller):
        params = query if query is not None else await _search_params(request)
        start, count = _paging(params)
        inst = caller.institution_id
        stmt = select(ScimGroup).where(col(ScimGroup.institution_id) == inst)
        text = _filter_text(params)
        if text is not None:
            stmt = stmt.where(to_sql(parse_filter(text), "Group"))
        total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
        groups = (
            list(
                (
                    await session.execute(stmt.order_by(col(ScimGroup.id)).offset(start - 1).limit(count))
                ).scalars()
            )
            if count
            else []
        )
        members = await group_ops.members_of(session, inst, [g.id for g in groups])
        base = _base(request)
        return _list(
            [_projected(params, group_resource(g, members[g.id], base)) for g in groups], total, start
        )


@router.post("/Groups")
@scim_errors
async def create_group(request: Request) -> Response:
    async with _open(request, write=True) as (session, caller):
        data = parse_group(await _body(request))
        group = await group_ops.create_group(session, caller, data)
        doc = await _group_doc(request, session, caller.institution_id, group)
        await _commit(request, session, caller)
        return scim_json(doc, 201, doc["meta"]["location"])


@router.get("/Groups/{group_id}")
@scim_errors
async def get_group(request: Request, group_id: str) -> Response:
    async with _open(request, write=False) as (session, caller):
        group = await group_ops.load_group(session, caller.institution_id, group_id)
        return scim_json(
            _projected(request.query_params, await _group_doc(request, session, caller.institution_id, group))
        )


@router.put("/Groups/{group_id}")
@scim_errors
async def replace_group(request: Request, group_id: str) -> Response:
    async with _open(request, write=True) as (session, caller):
        body = await _body(request)
        inst = caller.institution_id
        group = await group_ops.load_group(session, inst, group_id, lock=True)
        await group_ops.replace_group(session, caller, group, parse_group(body))
        doc = await _group_doc(request, session, inst, group)
        await _commit(request, session, caller)
        return scim_json(doc)


@router.patch("/Groups/{group_id}")
@scim_errors
async def patch_group(request: Request, group_id: str) -> Response:
    async with _open(request, write=True) as (session, caller):
        body = await _body(request)
        inst = caller.institution_id
        group = await group_ops.load_group(session, inst, group_id, lock=True)
        current = await _group_doc(request, session, inst, group)
        patched = apply_patch(current, body)
        await group_ops.replace_group(session, caller, group, parse_group(patched))
        doc = await _group_doc(request, session, inst, group)
        await _commit(request, session, caller)
        excluded = request.query_params.get("excludedAttributes")
        return scim_json(project(doc, None, excluded) if excluded else doc)


@router.delete("/Groups/{group_id}")
@scim_errors
async def delete_group(request: Request, group_id: str) -> Response:
    async with _open(request, write=True) as (session, caller):
        group = await group_ops.load_group(session, caller.institution_id, group_id, lock=True)
        await group_ops.delete_group(session, caller, group)
        await _commit(request, session, caller)
        return Response(status_code=204)


@router.post("/.search")
@scim_errors
async def search_all(request: Request) -> Response:
    async with _open(request, write=False):
        raise ScimError(
            501,
            "searching several resource types at once is not supported; use /Users/.search or /Groups/.search",
        )


_ENDPOINTS = frozenset({"ServiceProviderConfig", "ResourceTypes", "Schemas", "Users", "Groups"})


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@scim_errors
async def unknown(request: Request, rest: str) -> Response:
    """An endpoint that exists answers a method it does not offer with 405; anything else is 404."""
    async with _open(request, write=False):
        parts = rest.split("/")
        if parts[0] in _ENDPOINTS and len(parts) <= 2:
            raise ScimError(405, f"{request.method} is not allowed on {PREFIX}/{rest[:100]}")
        raise ScimError(404, f"no SCIM endpoint {PREFIX}/{rest[:100]}")


def mount_scim(app: FastAPI) -> None:
    app.add_exception_handler(ScimError, scim_error_handler)
    app.include_router(router)
