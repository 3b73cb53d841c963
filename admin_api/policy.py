"""Model policy over the whole tree: each unit's models within its parent's, its default among them.

Checked after every change that can break it (a unit's list, a move, a model
removed from the catalog), over the whole tree, so the gateway never meets a
unit whose default model it may not use.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from admin_api.errors import conflict
from admin_api.tree import UnitTree
from core.models import ModelOffer
from providers.policy import effective_models


async def catalogue(session: AsyncSession, institution_id: str) -> tuple[str, ...]:
    """Model ids the institution offers (any provider), in catalog order."""
    stmt = select(ModelOffer.id).where(ModelOffer.institution_id == institution_id)
    stmt = stmt.order_by(col(ModelOffer.position), col(ModelOffer.id))
    return tuple(dict.fromkeys((await session.execute(stmt)).scalars().all()))


def effective_all(tree: UnitTree, catalog: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    root = tree.root
    if root is None:
        return out
    for uid in tree.subtree(root):
        unit = tree.units[uid]
        parent = out[unit.parent_id] if unit.parent_id is not None else catalog
        out[uid] = effective_models(unit.models, parent)
    return out


def policy_problems(tree: UnitTree, catalog: tuple[str, ...]) -> list[dict[str, str]]:
    effective = effective_all(tree, catalog)
    problems: list[dict[str, str]] = []
    for uid, allowed in effective.items():
        unit = tree.units[uid]
        parent = effective[unit.parent_id] if unit.parent_id is not None else catalog
        for model in unit.models or []:
            if model not in catalog:
                problems.append({"unit": uid, "message": f"{model!r} is not in the model catalog"})
            elif model not in parent:
                problems.append({"unit": uid, "message": f"{model!r} is not allowed by the parent unit"})
        if unit.default_model is not None and unit.default_model not in allowed:
            problems.append(
                {
                    "unit": uid,
                    "message": f"default model {unit.default_model!r} is not among its allowed models",
                }
            )
    return problems


def require_consistent(tree: UnitTree, catalog: tuple[str, ...], before: list[dict[str, str]]) -> None:
    """Refuse a change that adds policy problems; ones already there (an old import) are not ours to block."""
    known = {(p["unit"], p["message"]) for p in before}
    new = [p for p in policy_problems(tree, catalog) if (p["unit"], p["message"]) not in known]
    if new:
        raise conflict("model_policy", "the change would break the model policy of some units", problems=new)
