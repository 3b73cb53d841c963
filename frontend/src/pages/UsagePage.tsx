import { useMemo, useState } from "react";
import { Area, AreaChart, Bar, BarChart, CartesianGrid, ComposedChart, Legend, Line, ReferenceLine, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { useCapabilities } from "../api/capabilities";
import { useForecast, useTopUsers, useTree, useUsage, type Range } from "../api/hooks";
import type { Dimension, ForecastOut, UsageRowOut } from "../api/types";
import { Empty, QueryState } from "../components/Status";
import { Remaining } from "./KeysPage";
import { amount, dateOnly, money, tokens } from "../lib/format";
import { MyUsage } from "./MyUsage";
import { costOf, cumulative, PALETTE, pivot, tokensOf, totals } from "../lib/series";
import { indexTree, label } from "../lib/tree";
import { useSession } from "../session";

const DIMENSIONS: { id: Dimension; label: string }[] = [
  { id: "unit", label: "Unit" },
  { id: "model", label: "Model" },
  { id: "provider", label: "Provider" },
  { id: "purpose", label: "Purpose" },
  { id: "user", label: "User" },
];

type RangeId = "month" | "30d" | "7d" | "24h";

function rangeOf(id: RangeId): Range {
  const now = new Date();
  switch (id) {
    case "24h":
      return { start: new Date(now.getTime() - 24 * 3600e3).toISOString().slice(0, 13) + ":00:00Z", bucket: "hour" };
    case "7d":
      return { start: new Date(now.getTime() - 7 * 86400e3).toISOString().slice(0, 10) + "T00:00:00Z", bucket: "day" };
    case "30d":
      return { start: new Date(now.getTime() - 30 * 86400e3).toISOString().slice(0, 10) + "T00:00:00Z", bucket: "day" };
    default:
      return { bucket: "day" }; // the server's default: this month, local
  }
}

/** Spend over time by unit, model, provider, purpose and user; top users; the period-end forecast. */
export default function UsagePage() {
  const s = useSession();
  const caps = useCapabilities();
  const canReports = s.hasScope || s.teaches;
  const hasUnitUsage = caps.data?.has("GET", /^\/api\/v1\/units\/\{unit_id\}\/usage$/);
  const hasMine = caps.data?.has("GET", /^\/api\/v1\/me\/usage$/);
  return (
    <section className="page" aria-labelledby="usage-title">
      <div className="page-head">
        <div>
          <h1 id="usage-title">Usage</h1>
          <p className="muted">Live: refreshed every few seconds.</p>
        </div>
      </div>
      {caps.isLoading ? null : (
        <div className="stack-lg">
          {canReports && (hasUnitUsage ? <UnitUsage /> : <Empty>This server has no usage report routes.</Empty>)}
          {s.hasMemberships && hasMine && <MyUsage />}
          {s.hasMemberships && !canReports && s.me.memberships.map((m) => <div className="card" key={m.unit_id}><h2>{m.unit_name ?? m.unit_id}</h2><Remaining unitId={m.unit_id} /></div>)}
        </div>
      )}
    </section>
  );
}

function UnitUsage() {
  const s = useSession();
  const tree = useTree();
  const caps = useCapabilities();
  const index = useMemo(() => (tree.data ? indexTree(tree.data.roots) : null), [tree.data]);
  const roots = tree.data?.roots ?? [];
  const [unitId, setUnitId] = useState("");
  const [rangeId, setRangeId] = useState<RangeId>("month");
  const [dim, setDim] = useState<Dimension>("model");
  const [metric, setMetric] = useState<"cost" | "tokens">("cost");
  const unit = unitId || roots[0]?.id || s.me.memberships.find((m) => m.role === "instructor")?.unit_id || "";
  const range = useMemo(() => rangeOf(rangeId), [rangeId]);
  const usage = useUsage(unit, [dim], range);
  const top = useTopUsers(unit, range, !!caps.data?.has("GET", /usage\/top-users$/));
  const hasForecast = !!caps.data?.has("GET", /usage\/forecast$/);
  const value = metric === "cost" ? costOf : tokensOf;
  const fmt = (v: number) => amount(metric, v, s.me.currency);
  const options = index ? [...index.values()].filter((u) => !u.archived) : [];

  return (
    <>
      <div className="card filters">
        <div className="row-wrap">
          <label className="field">
            <span>Unit (and everything below)</span>
            <select value={unit} onChange={(e) => setUnitId(e.target.value)}>
              {options.slice(0, 3000).map((u) => (
                <option key={u.id} value={u.id}>
                  {label(u)} ({u.id})
                </option>
              ))}
              {options.length === 0 && unit && <option value={unit}>{unit}</option>}
            </select>
          </label>
          <label className="field">
            <span>Time</span>
            <select value={rangeId} onChange={(e) => setRangeId(e.target.value as RangeId)}>
              <option value="month">This month (daily)</option>
              <option value="30d">Last 30 days (daily)</option>
              <option value="7d">Last 7 days (daily)</option>
              <option value="24h">Last 24 hours (hourly)</option>
            </select>
          </label>
          <fieldset className="field">
            <legend>Measure</legend>
            <div className="segmented">
              {(["cost", "tokens"] as const).map((m) => (
                <label key={m} className={`seg ${metric === m ? "seg-on" : ""}`}>
                  <input type="radio" name="metric" checked={metric === m} onChange={() => setMetric(m)} /> {m === "cost" ? "Cost" : "Tokens"}
                </label>
              ))}
            </div>
          </fieldset>
        </div>
        <fieldset className="field">
          <legend>Break down by</legend>
          <div className="segmented">
            {DIMENSIONS.map((d) => (
              <label key={d.id} className={`seg ${dim === d.id ? "seg-on" : ""}`}>
                <input type="radio" name="dim" checked={dim === d.id} onChange={() => setDim(d.id)} /> {d.label}
              </label>
            ))}
          </div>
        </fieldset>
      </div>

      <QueryState query={usage} label="Loading usage…">
        {(report) => <Breakdown rows={report.rows} dim={dim} value={value} fmt={fmt} unitName={(id) => (index?.get(id) ? label(index.get(id)!) : id)} />}
      </QueryState>

      <div className="grid-2">
        <section className="card" aria-labelledby="top-title">
          <h2 id="top-title">Top users</h2>
          <QueryState query={top}>
            {(list) =>
              list.length === 0 ? (
                <p className="muted">No usage in this time.</p>
              ) : (
                <table className="table">
                  <thead>
                    <tr>
                      <th scope="col">User</th>
                      <th scope="col">Requests</th>
                      <th scope="col">Tokens</th>
                      <th scope="col">Cost</th>
                    </tr>
                  </thead>
                  <tbody>
                    {list.map((u) => (
                      <tr key={u.user_id ?? "-"}>
                        <th scope="row">{u.user_id ?? "(no user)"}</th>
                        <td>{u.requests.toLocaleString()}</td>
                        <td>{tokens(u.tokens)}</td>
                        <td>{money(u.cost_micro, s.me.currency)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )
            }
          </QueryState>
        </section>
        {hasForecast ? <Forecasts unitId={unit} name={(id) => (index?.get(id) ? label(index.get(id)!) : id)} /> : (
          <section className="card"><h2>Forecast</h2><p className="muted">This server has no forecast route.</p></section>
        )}
      </div>
    </>
  );
}

function Breakdown({ rows, dim, value, fmt, unitName }: { rows: UsageRowOut[]; dim: string; value: (r: UsageRowOut) => number; fmt: (v: number) => string; unitName: (id: string) => string }) {
  const { points, keys } = useMemo(() => pivot(rows, dim, value), [rows, dim, value]);
  const sums = useMemo(() => totals(rows, dim, value).slice(0, 12), [rows, dim, value]);
  const name = (k: string) => (dim === "unit" ? unitName(k) : k);
  const total = sums.reduce((a, b) => a + b.value, 0);
  if (rows.length === 0) return <Empty>No usage in this time.</Empty>;
  const tick = (b: string) => {
    const d = new Date(b);
    return points.length > 0 && rows.some((r) => r.bucket && new Date(r.bucket).getHours() !== new Date(points[0].bucket as string).getHours())
      ? d.toLocaleTimeString(undefined, { hour: "2-digit" })
      : d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  };
  return (
    <div className="grid-2 wide-first">
      <section className="card" aria-labelledby="over-time">
        <h2 id="over-time">Over time</h2>
        <p className="muted small">Total {fmt(total)}</p>
        <div className="chart" role="img" aria-label={`Usage over time by ${dim}: ${sums.map((s) => `${name(s.key)} ${fmt(s.value)}`).join(", ")}`}>
          <ResponsiveContainer width="100%" height={280}>
            <AreaChart data={points} margin={{ top: 8, right: 8, bottom: 0, left: 0 }}>
              <CartesianGrid strokeDasharray="3 3" vertical={false} stroke="var(--grid)" />
              <XAxis dataKey="bucket" tickFormatter={tick} stroke="var(--muted)" fontSize={12} />
              <YAxis tickFormatter={(v: number) => fmt(v)} stroke="var(--muted)" fontSize={12} width={72} />
              <Tooltip formatter={(v, n) => [fmt(Number(v)), name(String(n))]} labelFormatter={(l) => new Date(String(l)).toLocaleString()} />
              <Legend formatter={(v) => name(String(v))} />
              {keys.map((k, i) => (
                <Area key={k} type="monotone" dataKey={k} stackId="1" stroke={PALETTE[i % PALETTE.length]} fill={PALETTE[i % PALETTE.length]} fillOpacity={0.35} isAnimationActive={false} />
              ))}
            </AreaChart>
          </ResponsiveContainer>
        </div>
      </section>
      <section className="card" aria-labelledby="by-key">
        <h2 id="by-key">By {dim}</h2>
        <div className="chart" aria-hidden="true">
          <ResponsiveContainer width="100%" height={Math.max(120, sums.length * 34)}>
            <BarChart data={sums.map((x) => ({ ...x, label: name(x.key) }))} layout="vertical" margin={{ left: 8, right: 16 }}>
              <XAxis type="number" hide />
              <YAxis type="category" dataKey="label" width={120} fontSize={12} stroke="var(--muted)" />
              <Tooltip formatter={(v) => fmt(Number(v))} />
              <Bar dataKey="value" fill={PALETTE[0]} radius={[0, 6, 6, 0]} isAnimationActive={false} />
            </BarChart>
          </ResponsiveContainer>
        </div>
        <table className="table table-compact">
          <caption className="sr-only">Totals by {dim}</caption>
          <thead>
            <tr>
              <th scope="col">{dim}</th>
              <th scope="col">Requests</th>
              <th scope="col">Total</th>
            </tr>
          </thead>
          <tbody>
            {sums.map((x) => (
              <tr key={x.key}>
                <th scope="row">{name(x.key)}</th>
                <td>{x.requests.toLocaleString()}</td>
                <td>{fmt(x.value)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </div>
  );
}

function Forecasts({ unitId, name }: { unitId: string; name: (id: string) => string }) {
  const f = useForecast(unitId);
  const daily = useUsage(unitId, ["unit"], { bucket: "day" });
  return (
    <section className="card" aria-labelledby="fc-title">
      <h2 id="fc-title">Forecast to period end</h2>
      <QueryState query={f} label="Forecasting…">
        {(list) => (
          <div className="stack">
            {list[0] && <ForecastChart fc={list[0]} rows={daily.data?.rows ?? []} />}
            <ul className="forecast-list">
              {list.map((x) => (
                <ForecastItem key={x.unit_id} fc={x} name={name(x.unit_id)} />
              ))}
            </ul>
          </div>
        )}
      </QueryState>
    </section>
  );
}

function ForecastItem({ fc, name }: { fc: ForecastOut; name: string }) {
  const { me } = useSession();
  const max = Math.max(fc.high, fc.cap ?? 0, fc.spent, 1);
  const pct = (v: number) => `${Math.min(100, (v / max) * 100)}%`;
  const over = fc.cap !== null && fc.projected > fc.cap;
  return (
    <li className="forecast-item" data-testid={`forecast-${fc.unit_id}`}>
      <div className="forecast-head">
        <strong>{name}</strong>
        <span className={over ? "text-danger" : "muted"}>
          {fc.exhaustion ? `runs out ${dateOnly(fc.exhaustion)}` : fc.cap === null ? "no cap of its own" : "lasts the period"}
        </span>
      </div>
      <div className="bullet" aria-hidden="true">
        <span className="bullet-band" style={{ left: pct(fc.low), width: `calc(${pct(fc.high)} - ${pct(fc.low)})` }} />
        <span className="bullet-spent" style={{ width: pct(fc.spent) }} />
        <span className="bullet-proj" style={{ left: pct(fc.projected) }} />
        {fc.cap !== null && <span className="bullet-cap" style={{ left: pct(fc.cap) }} />}
      </div>
      <p className="small">
        Spent {money(fc.spent, me.currency)} · projected <strong>{money(fc.projected, me.currency)}</strong> (80% band {money(fc.low, me.currency)} – {money(fc.high, me.currency)}) by{" "}
        {dateOnly(fc.period_end)}
        {fc.cap !== null && <> · cap {money(fc.cap, me.currency)}</>}
      </p>
    </li>
  );
}

function ForecastChart({ fc, rows }: { fc: ForecastOut; rows: UsageRowOut[] }) {
  const { me } = useSession();
  const data = useMemo(() => {
    const start = Date.parse(`${fc.period_start}T00:00:00`);
    const history = cumulative(rows.filter((r) => r.bucket && Date.parse(r.bucket) >= start), costOf).map((p) => ({ t: Date.parse(p.bucket), spent: p.total }));
    const now = Date.now();
    const end = Date.parse(`${fc.period_end}T00:00:00`);
    const last = history.length ? history[history.length - 1].spent : 0;
    return [
      ...history,
      { t: now, spent: last, projected: fc.spent, band: [fc.spent, fc.spent] },
      { t: end, projected: fc.projected, band: [fc.low, fc.high] },
    ];
  }, [fc, rows]);
  return (
    <div className="chart" role="img" aria-label={`Projected spend ${money(fc.projected, me.currency)} by ${dateOnly(fc.period_end)}, band ${money(fc.low, me.currency)} to ${money(fc.high, me.currency)}`}>
      <ResponsiveContainer width="100%" height={200}>
        <ComposedChart data={data} margin={{ top: 8, right: 8, bottom: 0, left: 0 }}>
          <CartesianGrid strokeDasharray="3 3" vertical={false} stroke="var(--grid)" />
          <XAxis dataKey="t" type="number" scale="time" domain={["dataMin", "dataMax"]} tickFormatter={(t: number) => new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric" })} fontSize={12} stroke="var(--muted)" />
          <YAxis tickFormatter={(v: number) => money(v, me.currency)} fontSize={12} width={72} stroke="var(--muted)" />
          <Tooltip formatter={(v) => (Array.isArray(v) ? v.map((x) => money(Number(x), me.currency)).join(" – ") : money(Number(v), me.currency))} labelFormatter={(t) => new Date(Number(t)).toLocaleDateString()} />
          <Area dataKey="band" stroke="none" fill={PALETTE[0]} fillOpacity={0.15} isAnimationActive={false} name="80% band" />
          <Line dataKey="spent" stroke={PALETTE[1]} strokeWidth={2} dot={false} isAnimationActive={false} name="spent (gross)" />
          <Line dataKey="projected" stroke={PALETTE[0]} strokeDasharray="5 4" strokeWidth={2} dot={false} isAnimationActive={false} name="projected" connectNulls />
          {fc.cap !== null && <ReferenceLine y={fc.cap} stroke="var(--danger)" strokeDasharray="4 4" label={{ value: "cap", position: "insideTopRight", fontSize: 11 }} />}
        </ComposedChart>
      </ResponsiveContainer>
    </div>
  );
}

