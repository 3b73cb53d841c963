"""Units: the tree, one unit, and its structure (create, rename, move, archive)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from admin_api.budget_view import BudgetWarning, numbers_for
from admin_api.context import Ctx, reader, row_label, snapshot, writer
from admin_api.errors import conflict
from admin_api.ids import KIND, SLUG, TEXT, UnitId
from admin_api.policy import catalogue, policy_problems, require_consistent
from admin_api.unit_view import TreeNode, UnitOut, renderer
from core.models import Unit

router = APIRouter(tags=["units"])


class TreeOut(BaseModel):
    at: datetime
    compiled: bool  # False: quota has not compiled this institution yet, so spend is unknown
    roots: list[TreeNode]
    warnings: list[BudgetWarning]


class UnitCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=SLUG)
    parent_id: str = Field(pattern=SLUG)
    kind: str = Field(pattern=KIND)
    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=TEXT)


class UnitPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=TEXT)
    kind: str | None = Field(default=None, pattern=KIND)


class UnitMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent_id: str = Field(pattern=SLUG)


@router.get("/units/tree", response_model=TreeOut, summary="The caller's visible subtree with caps and spend")
async def unit_tree(include_archived: bool = False, ctx: Ctx = Depends(reader("org:read"))) -> TreeOut:
    r = await renderer(ctx.session, ctx.access.tree, ctx.institution_id, ctx.state.quota)
    roots = [
        u for u in ctx.access.visible_roots() if include_archived or not ctx.access.tree.units[u].archived
    ]
    shown = [uid for top in roots for uid in ctx.access.tree.subtree(top)]
    return TreeOut(
        at=r.numbers.at,
        compiled=r.numbers.live.compiled,
        roots=[r.nested(u, include_archived) for u in roots],
        warnings=r.numbers.warnings(shown, r.archived),
    )


@router.get("/units/{unit_id}", response_model=UnitOut, summary="One unit with its budget, caps and spend")
async def get_unit(unit_id: UnitId, ctx: Ctx = Depends(reader("org:read"))) -> UnitOut:
    ctx.access.unit(unit_id)
    ctx.access.require(ctx.access.can_read_unit(unit_id), "you have no role in this unit", unit_id)
    return await _render(ctx, unit_id)


async def _render(ctx: Ctx, unit_id: str) -> UnitOut:
    r = await renderer(ctx.session, ctx.access.tree, ctx.institution_id, ctx.state.quota)
    return r.one(unit_id)


@router.post("/units", response_model=UnitOut, status_code=201, summary="Create a unit under a parent")
async def create_unit(body: UnitCreate, ctx: Ctx = Depends(writer("org:write"))) -> UnitOut:
    access = ctx.access
    parent = access.unit(body.parent_id)
    access.require(
        access.can_create_under(parent.id), "only an admin of the parent may add units to it", parent.id
    )
    if parent.archived:
        raise conflict("unit_archived", f"unit {parent.id!r} is archived", unit=parent.id)
    if body.id in access.tree.units:
        raise conflict("unit_exists", f"a unit {body.id!r} already exists (perhaps archived)", unit=body.id)
    position = max((access.tree.units[k].position for k in access.tree.kids(parent.id)), default=-1) + 1
    unit = Unit(institution_id=ctx.institution_id, id=body.id, parent_id=parent.id, kind=body.kind, name=body.name,
                position=position)  # fmt: skip
    ctx.session.add(unit)
    await ctx.session.flush()
    access.tree.units[unit.id] = unit
    access.tree.children.setdefault(parent.id, []).append(unit.id)
    ctx.audit_row("unit.create", None, unit)
    await ctx.commit()
    return await _render(ctx, unit.id)


@router.patch("/units/{unit_id}", response_model=UnitOut, summary="Rename a unit (or change its kind)")
async def patch_unit(unit_id: UnitId, body: UnitPatch, ctx: Ctx = Depends(writer("org:write"))) -> UnitOut:
    access = ctx.access
    unit = access.unit(unit_id)
    access.require(access.can_edit_rules(unit_id), "only an admin above this unit may change it", unit_id)
    before = snapshot(unit)
    if body.name is not None:
        unit.name = body.name
    if body.kind is not None:
        unit.kind = body.kind
    after = snapshot(unit)
    if after != before:
        ctx.audit("unit.update", row_label(unit), before, after)
    await ctx.commit()
    return await _render(ctx, unit_id)


@router.post("/units/{unit_id}/move", response_model=UnitOut, summary="Move a unit under another parent")
async def move_unit(unit_id: UnitId, body: UnitMove, ctx: Ctx = Depends(writer("org:write"))) -> UnitOut:
    access = ctx.access
    unit = access.unit(unit_id)
    target = access.unit(body.parent_id)
    access.require(access.can_edit_rules(unit_id), "only an admin above this unit may move it", unit_id)
    access.require(
        access.scope_covers(("admin",), target.id),
        "you may only move units to a parent you administer",
        target.id,
    )
    if access.tree.is_within(target.id, unit_id):
        raise conflict(
            "move_cycle", "a unit cannot move under itself or its own descendants", parent=target.id
        )
    if target.archived:
        raise conflict("unit_archived", f"unit {target.id!r} is archived", unit=target.id)
    if unit.parent_id == target.id:
        return await _render(ctx, unit_id)
    catalog = await catalogue(ctx.session, ctx.institution_id)
    problems_before = policy_problems(access.tree, catalog)
    before = snapshot(unit)
    old_parent = unit.parent_id
    assert old_parent is not None  # the root has no admin above it, so it never gets here
    unit.parent_id = target.id
    unit.position = max((access.tree.units[k].position for k in access.tree.kids(target.id)), default=-1) + 1
    access.tree.children[old_parent].remove(unit_id)
    access.tree.children.setdefault(target.id, []).append(unit_id)
    require_consistent(access.tree, catalog, problems_before)
    await ctx.session.flush()
    await numbers_for(ctx.session, ctx.institution_id, None)  # a percent must still find a cap above it
    ctx.audit("unit.move", row_label(unit), before, snapshot(unit))
    await ctx.commit()
    return await _render(ctx, unit_id)


@router.post(
    "/units/{unit_id}/archive", response_model=UnitOut, summary="Archive a unit and everything below it"
)
async def archive_unit(unit_id: UnitId, ctx: Ctx = Depends(writer("org:write"))) -> UnitOut:
    """Archived, not deleted: usage history stays readable and keys of archived units stop working."""
    access = ctx.access
    access.unit(unit_id)
    access.require(access.can_edit_rules(unit_id), "only an admin above this unit may archive it", unit_id)
    if access.tree.root == unit_id:
        raise conflict("root_unit", "the institution's root unit cannot be archived", unit=unit_id)
    for uid in access.tree.subtree(unit_id):
        unit = access.tree.units[uid]
        if not unit.archived:
            before = snapshot(unit)
            unit.archived = True
            ctx.audit("unit.archive", row_label(unit), before, snapshot(unit))
    await ctx.commit()
    return await _render(ctx, unit_id)
