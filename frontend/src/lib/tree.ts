/** Walking the unit tree the admin API returns (nested `TreeNode`s) without recursion limits. */

import type { BudgetWarning, TreeNode } from "../api/types";

export interface FlatRow {
  node: TreeNode;
  depth: number;
  hasChildren: boolean;
  expanded: boolean;
  /** position in its parent, 1-based, and the parent's child count (for aria-posinset/setsize) */
  pos: number;
  size: number;
}

export function indexTree(roots: TreeNode[]): Map<string, TreeNode> {
  const out = new Map<string, TreeNode>();
  const stack = [...roots];
  while (stack.length) {
    const n = stack.pop()!;
    out.set(n.id, n);
    for (const c of n.children) stack.push(c);
  }
  return out;
}

export function label(n: { id: string; name: string | null }): string {
  return n.name ?? n.id;
}

/** Units whose id or name contains the query, plus their ancestors (so a match is shown in place). */
export function matching(roots: TreeNode[], query: string): Set<string> | null {
  const q = query.trim().toLowerCase();
  if (!q) return null;
  const keep = new Set<string>();
  const walk = (n: TreeNode): boolean => {
    let any = n.id.toLowerCase().includes(q) || (n.name ?? "").toLowerCase().includes(q);
    for (const c of n.children) if (walk(c)) any = true;
    if (any) keep.add(n.id);
    return any;
  };
  for (const r of roots) walk(r);
  return keep;
}

/**
 * The rows to draw: depth-first, children only under expanded units. With a search, every
 * matching unit and its ancestors are shown and expanded.
 */
export function flatten(roots: TreeNode[], expanded: Set<string>, filter: Set<string> | null): FlatRow[] {
  const rows: FlatRow[] = [];
  const visit = (list: TreeNode[], depth: number) => {
    const shown = filter ? list.filter((n) => filter.has(n.id)) : list;
    shown.forEach((node, i) => {
      const kids = filter ? node.children.filter((c) => filter.has(c.id)) : node.children;
      const open = filter ? kids.length > 0 : expanded.has(node.id);
      rows.push({ node, depth, hasChildren: kids.length > 0, expanded: open && kids.length > 0, pos: i + 1, size: shown.length });
      if (open) visit(node.children, depth + 1);
    });
  };
  visit(roots, 0);
  return rows;
}

/** Units open by default: the roots and their children, so the first screen shows three levels. */
export function defaultExpanded(roots: TreeNode[]): Set<string> {
  const out = new Set<string>();
  for (const r of roots) {
    out.add(r.id);
    for (const c of r.children) out.add(c.id);
  }
  return out;
}

export function warningsByUnit(warnings: BudgetWarning[]): Map<string, BudgetWarning[]> {
  const out = new Map<string, BudgetWarning[]>();
  for (const w of warnings) {
    const list = out.get(w.unit) ?? [];
    list.push(w);
    out.set(w.unit, list);
  }
  return out;
}

export function countUnits(roots: TreeNode[]): number {
  return indexTree(roots).size;
}

/** Ids from the root to the unit (inclusive). */
export function pathTo(index: Map<string, TreeNode>, id: string): string[] {
  const out: string[] = [];
  let cur = index.get(id);
  while (cur) {
    out.unshift(cur.id);
    cur = cur.parent_id ? index.get(cur.parent_id) : undefined;
  }
  return out;
}
