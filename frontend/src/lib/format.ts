/**
 * Numbers as a person reads them. Money is integer micro-units of the institution's currency
 * everywhere in EduAiQ (1 USD = 1_000_000); only this module turns it into "$1.25".
 */

export const MICRO = 1_000_000;

const moneyFormats = new Map<string, Intl.NumberFormat>();

function moneyFormat(currency: string, precise: boolean, tiny = false): Intl.NumberFormat {
  const key = `${currency}:${precise}:${tiny}`;
  let f = moneyFormats.get(key);
  if (!f) {
    try {
      f = new Intl.NumberFormat(undefined, {
        style: "currency",
        currency,
        minimumFractionDigits: precise ? 2 : 0,
        maximumFractionDigits: tiny ? 6 : precise ? 4 : 2,
      });
    } catch {
      f = new Intl.NumberFormat(undefined, { maximumFractionDigits: precise ? 4 : 2 });
    }
    moneyFormats.set(key, f);
  }
  return f;
}

/** Micro-units to currency text; small amounts keep more decimals so a cent of spend is visible. */
export function money(micro: number | null | undefined, currency = "USD"): string {
  if (micro === null || micro === undefined) return "—";
  const units = micro / MICRO;
  const precise = Math.abs(units) < 10 && units !== Math.trunc(units);
  const tiny = units !== 0 && Math.abs(units) < 0.001;
  return moneyFormat(currency, precise, tiny).format(units);
}

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const plain = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

export function tokens(n: number | null | undefined, short = true): string {
  if (n === null || n === undefined) return "—";
  return short && Math.abs(n) >= 10_000 ? compact.format(n) : plain.format(n);
}

/** A metric's amount: money for cost, a token count for tokens. */
export function amount(metric: string, value: number | null | undefined, currency: string): string {
  return metric === "cost" ? money(value, currency) : `${tokens(value)} tok`;
}

export function percent(part: number, whole: number): string {
  if (!whole) return "—";
  const p = (part / whole) * 100;
  return `${p < 10 && p > 0 ? p.toFixed(1) : Math.round(p)}%`;
}

/** "12.5" (a currency amount typed by a person) to micro-units, or null if it is not a number. */
export function parseMoney(text: string): number | null {
  const t = text.trim().replace(/,/g, "");
  if (!/^\d+(\.\d{0,6})?$/.test(t)) return null;
  const [whole, frac = ""] = t.split(".");
  return Number(whole) * MICRO + Number((frac + "000000").slice(0, 6));
}

export function microToInput(micro: number | null | undefined): string {
  if (micro === null || micro === undefined) return "";
  const whole = Math.trunc(micro / MICRO);
  const frac = String(micro % MICRO).padStart(6, "0").replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : String(whole);
}

export function dateTime(iso: string | null | undefined, timeZone?: string): string {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short", timeZone });
}

export function dateOnly(iso: string | null | undefined, timeZone?: string): string {
  if (!iso) return "—";
  const d = new Date(iso.length === 10 ? `${iso}T12:00:00Z` : iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleDateString(undefined, { dateStyle: "medium", timeZone });
}

export function periodLabel(period: string | null | undefined): string {
  switch (period) {
    case "day":
      return "daily";
    case "week":
      return "weekly";
    case "month":
      return "monthly";
    case "semester":
      return "per semester";
    case "year":
      return "yearly";
    case "none":
      return "never resets";
    default:
      return "inherits";
  }
}
