import type { LiveNode } from "../api/types";
import { percent } from "../lib/format";

/**
 * Use of one limit as a bar (the CapBar look): requests or tokens in the last 60 s, or requests in
 * progress, against the limit; a meter for assistive technology with the numbers in text too.
 */
export function LimitMeter({ label, used, limit, unitText }: { label: string; used: number; limit: number; unitText: string }) {
  const pct = Math.min(100, (used / Math.max(limit, 1)) * 100);
  const ratio = used / Math.max(limit, 1);
  const tone = ratio >= 1 ? "over" : ratio >= 0.8 ? "high" : "ok";
  const text = `${used.toLocaleString()} of ${limit.toLocaleString()} ${unitText}`;
  return (
    <div className={`capbar capbar-compact tone-${tone}`}>
      <div className="capbar-track" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={limit} aria-valuenow={used} aria-valuetext={text}>
        <span className="capbar-used" style={{ width: `${pct}%` }} />
      </div>
      <div className="capbar-text">
        <strong>{used.toLocaleString()}</strong>
        <span className="muted">
          {" "}
          / {limit.toLocaleString()} {unitText}
        </span>
        <span className={`capbar-pct tone-${tone}`}>{percent(used, limit)}</span>
      </div>
    </div>
  );
}

const WHAT: Record<LiveNode["what"], string> = {
  unit: "Whole unit",
  member: "Member",
  provider: "Provider",
  model: "Model",
};

function clock(ms: number, timeZone?: string): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", timeZone });
}

/**
 * Every limit node of a live answer with its meters. Windows slide: what is counted now has aged
 * out 60 s later at the latest, so "free again by" is the moment the whole current count is gone.
 */
export function LiveNodes({ nodes, atMs, timeZone, empty }: { nodes: LiveNode[]; atMs: number; timeZone?: string; empty: string }) {
  if (nodes.length === 0) return <p className="muted">{empty}</p>;
  return (
    <ul className="plain-list stack" data-testid="live-limits">
      {nodes.map((n) => {
        const l = n.limits;
        const windowed = n.used.requests > 0 || n.used.tokens > 0;
        return (
          <li key={`${n.node}-${n.subject}`} data-node={n.node}>
            <h3 className="metric-title">
              {WHAT[n.what]} <code>{n.subject}</code>
            </h3>
            <div className="stack">
              {l.requests_per_minute != null && <LimitMeter label={`Requests per minute of ${n.subject}`} used={n.used.requests} limit={l.requests_per_minute} unitText="requests in the last 60 s" />}
              {l.tokens_per_minute != null && <LimitMeter label={`Tokens per minute of ${n.subject}`} used={n.used.tokens} limit={l.tokens_per_minute} unitText="tokens in the last 60 s" />}
              {l.concurrent != null && <LimitMeter label={`Concurrent requests of ${n.subject}`} used={n.used.concurrent} limit={l.concurrent} unitText="in progress" />}
            </div>
            {(l.requests_per_minute != null || l.tokens_per_minute != null) && (
              <p className="muted small">
                {windowed ? <>Sliding 60 s window: room comes back as requests age out, all of it by {clock(atMs + 60_000, timeZone)}.</> : <>Nothing counted in the last 60 s.</>}
              </p>
            )}
          </li>
        );
      })}
    </ul>
  );
}
