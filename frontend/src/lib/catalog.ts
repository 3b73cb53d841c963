/**
 * Bodies for the catalog's PUT routes built from what the catalog GET returns. The PUT replaces the
 * whole provider or model, so an edit of one part (price, limits) must send every other part back
 * as it was, or saving a price would silently drop the model's limits.
 */

import type { Contract, Limits, OfferOut, ProviderOut, QueueConfig } from "../api/types";

export const SELF_HOSTED = new Set(["vllm", "openai-compatible"]);

export interface ModelPatch {
  price?: { input_per_mtok: number; output_per_mtok: number; cached_input_per_mtok: number | null } | null;
  limits?: Limits | null;
  contract?: Contract | null;
  slots?: number | null;
  queue?: QueueConfig | null;
}

/** The model's PUT body: its current settings (a list price stays a list price: null), then `patch`. */
export function modelBody(offer: OfferOut, patch: ModelPatch): Record<string, unknown> {
  const price =
    offer.price_source === "default"
      ? null
      : { input_per_mtok: offer.input_per_mtok, output_per_mtok: offer.output_per_mtok, cached_input_per_mtok: offer.cached_input_per_mtok };
  const current = {
    upstream: offer.upstream,
    vision: offer.vision,
    max_output_tokens: offer.max_output_tokens,
    price,
    priority: offer.priority ?? null,
    fallbacks: offer.fallbacks ?? [],
    image_tokens: offer.image_tokens ?? null,
    slots: offer.slots ?? null,
    queue: offer.slots ? (offer.queue ?? null) : null,
    limits: offer.limits ?? null,
    contract: offer.contract ?? null,
  };
  return { ...current, ...patch };
}

/** What the provider PUT accepts besides its columns (type, base_url, api_key_env). */
const PROVIDER_OPTIONS = new Set(["replicas", "priority", "timeouts", "health_check", "metrics_url", "headers", "limits", "contract"]);
const REDACTED = "[redacted]";

/**
 * The provider's PUT body with new limits and contract, or why it cannot be sent without losing
 * something (a setting the route does not take, or a header value the catalog shows redacted).
 */
export function providerBody(p: ProviderOut, limits: Limits | null, contract: Contract | null): { body: Record<string, unknown> | null; blocked: string | null } {
  const unknown = Object.keys(p.options).filter((k) => !PROVIDER_OPTIONS.has(k));
  if (unknown.length) return { body: null, blocked: `this provider has settings the dashboard cannot send back (${unknown.join(", ")}); change its limits in the institution file` };
  const headers = (p.options.headers ?? {}) as Record<string, string>;
  if (Object.values(headers).includes(REDACTED)) return { body: null, blocked: "this provider has a literal credential header the dashboard cannot see; change its limits in the institution file" };
  const body: Record<string, unknown> = { type: p.type, base_url: p.base_url || null, api_key_env: p.api_key_env };
  for (const [k, v] of Object.entries(p.options)) if (k !== "limits" && k !== "contract") body[k] = v;
  body.limits = limits;
  body.contract = contract;
  return { body, blocked: null };
}

const DECIMAL = /^\d+(\.\d{1,6})?$/;

export interface ContractForm {
  cost: string;
  period: "month" | "year";
}

export function contractForm(c: Contract | null | undefined): ContractForm {
  return { cost: c ? String(c.cost) : "", period: c?.period ?? "month" };
}

/** Currency units as a decimal string (the API keeps six decimals); empty cost: no contract. */
export function contractBody(f: ContractForm): { body: Contract | null; problem: string | null } {
  const t = f.cost.trim().replace(/,/g, "");
  if (!t) return { body: null, problem: null };
  if (!DECIMAL.test(t) || Number(t) <= 0) return { body: null, problem: "an amount above 0, like 4000 or 1250.50" };
  if (Number(t) > 9_000_000_000) return { body: null, problem: "too large (at most 9,000,000,000)" };
  return { body: { cost: t, period: f.period }, problem: null };
}
