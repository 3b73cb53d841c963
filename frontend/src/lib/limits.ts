/**
 * Rate limits as a form: three optional whole numbers (requests/min, tokens/min, concurrent). An
 * empty form means "no limit" (null), as the API stores it; a form with a value must be a whole
 * number of at least 1, the API's own rule, so most mistakes are named before anything is sent.
 */

import { LIMIT_FIELDS, type LimitField, type Limits } from "../api/types";

export type LimitsForm = Record<LimitField, string>;

export const LIMIT_LABELS: Record<LimitField, string> = {
  requests_per_minute: "Requests / min",
  tokens_per_minute: "Tokens / min",
  concurrent: "Concurrent",
};

const MAX: Record<LimitField, number> = { requests_per_minute: 1e9, tokens_per_minute: 1e12, concurrent: 1e6 };

export function limitsForm(l: Limits | null | undefined): LimitsForm {
  const out = {} as LimitsForm;
  for (const f of LIMIT_FIELDS) out[f] = l?.[f] == null ? "" : String(l[f]);
  return out;
}

/** The form as the API's limits (null when every field is empty), or the problems by field name. */
export function limitsBody(f: LimitsForm): { body: Limits | null; problems: Partial<Record<LimitField, string>> } {
  const problems: Partial<Record<LimitField, string>> = {};
  const body: Limits = {};
  for (const name of LIMIT_FIELDS) {
    const t = f[name].trim().replace(/[,_\s]/g, "");
    if (!t) continue;
    if (!/^\d+$/.test(t) || Number(t) < 1) problems[name] = "a whole number of at least 1, or empty for no limit";
    else if (Number(t) > MAX[name]) problems[name] = `at most ${MAX[name].toLocaleString()}`;
    else body[name] = Number(t);
  }
  return { body: Object.keys(body).length ? body : null, problems };
}

/** A limit in words: "60 requests/min · 4 at a time". */
export function limitsText(l: Limits | null | undefined): string {
  if (!l) return "none";
  const parts: string[] = [];
  if (l.requests_per_minute != null) parts.push(`${l.requests_per_minute.toLocaleString()} requests/min`);
  if (l.tokens_per_minute != null) parts.push(`${l.tokens_per_minute.toLocaleString()} tokens/min`);
  if (l.concurrent != null) parts.push(`${l.concurrent.toLocaleString()} at a time`);
  return parts.join(" · ") || "none";
}

/**
 * The API's validation problems ({path, message}) for one object in the body, by field: a path such as
 * "body.member_limits.concurrent" lands on `concurrent` of `member_limits`; "body.member_limits" (the
 * object itself, e.g. "give at least one of …") on the key "" of that object. An empty prefix gives
 * every problem by its whole path.
 */
export function problemsAt(details: unknown, prefix: string): Record<string, string> {
  const out: Record<string, string> = {};
  const list = (details as { problems?: { path?: string; message?: string }[] } | undefined)?.problems;
  if (!Array.isArray(list)) return out;
  for (const p of list) {
    const path = (p.path ?? "").replace(/^body\.?/, "");
    if (!prefix || path === prefix) out[prefix ? "" : path] = p.message ?? "";
    else if (path.startsWith(`${prefix}.`)) out[path.slice(prefix.length + 1)] = p.message ?? "";
  }
  return out;
}
