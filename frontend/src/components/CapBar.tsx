import { amount, percent } from "../lib/format";

interface Props {
  metric: string;
  used: number | null;
  reserved: number | null;
  cap: number | null;
  currency: string;
  label: string;
  compact?: boolean;
}

/**
 * Used, reserved and cap of one metric as a bar: spent in solid colour, held by requests in
 * flight striped, the rest free. A meter for assistive technology, with the numbers in text too.
 */
export function CapBar({ metric, used, reserved, cap, currency, label, compact }: Props) {
  const u = used ?? 0;
  const r = reserved ?? 0;
  const hasCap = cap !== null && cap !== undefined;
  const max = hasCap ? Math.max(cap, 1) : Math.max(u + r, 1);
  const usedPct = Math.min(100, (u / max) * 100);
  const resPct = Math.min(100 - usedPct, (r / max) * 100);
  const ratio = hasCap ? (u + r) / Math.max(cap, 1) : 0;
  const tone = !hasCap ? "none" : ratio >= 1 ? "over" : ratio >= 0.8 ? "high" : "ok";
  const text = hasCap
    ? `${amount(metric, u, currency)} used${r ? `, ${amount(metric, r, currency)} reserved` : ""} of ${amount(metric, cap, currency)}`
    : used === null
      ? "spend not known yet"
      : `${amount(metric, u, currency)} used, no cap of its own`;
  return (
    <div className={`capbar ${compact ? "capbar-compact" : ""} tone-${tone}`}>
      <div
        className="capbar-track"
        role="meter"
        aria-label={label}
        aria-valuemin={0}
        aria-valuemax={hasCap ? cap : undefined}
        aria-valuenow={u}
        aria-valuetext={text}
      >
        <span className="capbar-used" style={{ width: `${usedPct}%` }} />
        <span className="capbar-reserved" style={{ width: `${resPct}%` }} />
      </div>
      <div className="capbar-text">
        {hasCap ? (
          <>
            <strong>{amount(metric, u, currency)}</strong>
            <span className="muted"> / {amount(metric, cap, currency)}</span>
            {!compact && r > 0 && <span className="muted"> · {amount(metric, r, currency)} held</span>}
            <span className={`capbar-pct tone-${tone}`}>{percent(u + r, cap)}</span>
          </>
        ) : (
          <span className="muted">{text}</span>
        )}
      </div>
    </div>
  );
}
