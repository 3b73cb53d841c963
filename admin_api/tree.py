"""An institution's unit tree in memory: ancestors and subtrees, the questions every permission asks.

Loaded whole per request: a university has thousands of units at most, and one
query beats a recursive CTE per check.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from core.models import Unit


@dataclass
class UnitTree:
    units: dict[str, Unit]
    children: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def of(units: list[Unit]) -> UnitTree:
        kids: dict[str, list[str]] = defaultdict(list)
        for u in sorted(units, key=lambda u: (u.position, u.id)):
            if u.parent_id is not None:
                kids[u.parent_id].append(u.id)
        return UnitTree({u.id: u for u in units}, dict(kids))

    @property
    def root(self) -> str | None:
        roots = [u.id for u in self.units.values() if u.parent_id is None]
        return roots[0] if len(roots) == 1 else None

    def get(self, unit_id: str) -> Unit | None:
        return self.units.get(unit_id)

    def kids(self, unit_id: str) -> list[str]:
        return self.children.get(unit_id, [])

    def path(self, unit_id: str) -> list[str]:
        """The unit, its parent, ..., the root."""
        out = [unit_id]
        while (parent := self.units[out[-1]].parent_id) is not None and len(out) <= len(self.units):
            out.append(parent)
        return out

    def subtree(self, unit_id: str) -> list[str]:
        """The unit and everything below it, parents before children."""
        out = [unit_id]
        for uid in out:
            out.extend(self.kids(uid))
        return out

    def is_within(self, unit_id: str, top: str) -> bool:
        """True when `unit_id` is `top` or below it."""
        return top in self.path(unit_id)

    def is_below(self, unit_id: str, top: str) -> bool:
        return unit_id != top and self.is_within(unit_id, top)


async def load_tree(session: AsyncSession, institution_id: str) -> UnitTree:
    rows = (await session.execute(select(Unit).where(Unit.institution_id == institution_id))).scalars().all()
    return UnitTree.of(list(rows))
