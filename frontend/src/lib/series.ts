/** Usage rows (one per key and time bucket) reshaped for charts: pivoted, ranked and cumulated. */

import type { UsageRowOut } from "../api/types";

export const PALETTE = ["#6366f1", "#14b8a6", "#f59e0b", "#ec4899", "#0ea5e9", "#84cc16", "#a855f7", "#ef4444", "#64748b"];
export const OTHER = "other";

export type ValueOf = (r: UsageRowOut) => number;
export const costOf: ValueOf = (r) => r.cost_micro;
export const tokensOf: ValueOf = (r) => r.input_tokens + r.output_tokens;

export function keyOf(r: UsageRowOut, dim: string): string {
  return r.keys[dim] ?? "(none)";
}

/** Totals per key, largest first. */
export function totals(rows: UsageRowOut[], dim: string, value: ValueOf): { key: string; value: number; requests: number }[] {
  const out = new Map<string, { value: number; requests: number }>();
  for (const r of rows) {
    const k = keyOf(r, dim);
    const t = out.get(k) ?? { value: 0, requests: 0 };
    t.value += value(r);
    t.requests += r.requests;
    out.set(k, t);
  }
  return [...out.entries()].map(([key, t]) => ({ key, ...t })).sort((a, b) => b.value - a.value || a.key.localeCompare(b.key));
}

/**
 * One point per bucket with a field per key (the `top` largest keys; the rest summed as "other"),
 * in bucket order. Values stay in the rows' units (micro-units or tokens).
 */
export function pivot(rows: UsageRowOut[], dim: string, value: ValueOf, top = 6): { points: Record<string, number | string>[]; keys: string[] } {
  const ranked = totals(rows, dim, value);
  const kept = ranked.slice(0, top).map((t) => t.key);
  const keys = ranked.length > top ? [...kept, OTHER] : kept;
  const byBucket = new Map<string, Record<string, number | string>>();
  for (const r of rows) {
    if (!r.bucket) continue;
    const k = kept.includes(keyOf(r, dim)) ? keyOf(r, dim) : OTHER;
    let p = byBucket.get(r.bucket);
    if (!p) {
      p = { bucket: r.bucket };
      for (const key of keys) p[key] = 0;
      byBucket.set(r.bucket, p);
    }
    p[k] = (p[k] as number) + value(r);
  }
  const points = [...byBucket.values()].sort((a, b) => Date.parse(a.bucket as string) - Date.parse(b.bucket as string));
  return { points, keys };
}

/** Running total per bucket (for spend against a cap over the period). */
export function cumulative(rows: UsageRowOut[], value: ValueOf): { bucket: string; total: number }[] {
  const per = new Map<string, number>();
  for (const r of rows) if (r.bucket) per.set(r.bucket, (per.get(r.bucket) ?? 0) + value(r));
  let run = 0;
  return [...per.entries()]
    .sort((a, b) => Date.parse(a[0]) - Date.parse(b[0]))
    .map(([bucket, v]) => {
      run += v;
      return { bucket, total: run };
    });
}

/** "12.345678" (an export's money string) to micro-units, exactly. */
export function moneyToMicro(text: string): number {
  const neg = text.startsWith("-");
  const [whole, frac = ""] = text.replace("-", "").split(".");
  const v = Number(whole) * 1_000_000 + Number((frac + "000000").slice(0, 6));
  return neg ? -v : v;
}
