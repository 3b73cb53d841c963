import type { BudgetIn, TreeNode, UnitOut } from "../api/types";

export const inheritBudget: BudgetIn = {
  period: null,
  cost: { mode: "inherit", amount: null, percent: null },
  tokens: { mode: "inherit", amount: null, percent: null },
  member_cap: { cost: { mode: "none", amount: null, factor: null }, tokens: { mode: "none", amount: null, factor: null } },
};

export function unit(id: string, over: Partial<UnitOut> = {}, cost: { cap: number | null; used: number | null; reserved?: number } = { cap: null, used: 0 }): UnitOut {
  return {
    id,
    parent_id: null,
    kind: "department",
    name: id.toUpperCase(),
    archived: false,
    position: 0,
    models: null,
    default_model: null,
    effective_models: ["demo-chat"],
    budget: inheritBudget,
    numbers: {
      period: "month",
      period_key: "m:2026-11",
      resets_at: "2026-12-01T06:00:00Z",
      metrics: {
        cost: { cap: cost.cap, member_cap: null, used: cost.used, reserved: cost.reserved ?? 0, room: cost.cap === null ? null : cost.cap - (cost.used ?? 0) },
        tokens: { cap: null, member_cap: null, used: 0, reserved: 0, room: null },
      },
      extras: [],
    },
    warnings: [],
    ...over,
  };
}

export function node(id: string, children: TreeNode[] = [], over: Partial<UnitOut> = {}, cost?: { cap: number | null; used: number | null }): TreeNode {
  return { ...unit(id, over, cost), children: children.map((c) => ({ ...c, parent_id: id })) };
}
