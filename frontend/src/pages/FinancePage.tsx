import { Download, FileSpreadsheet } from "lucide-react";
import { useMemo, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { api, download } from "../api/client";
import { useCapabilities } from "../api/capabilities";
import { exportPath, useTree } from "../api/hooks";
import type { ExportJson, TreeNode } from "../api/types";
import { Empty, errorText, QueryState } from "../components/Status";
import { useToast } from "../components/Toasts";
import { money, tokens } from "../lib/format";
import { moneyToMicro } from "../lib/series";
import { indexTree, label } from "../lib/tree";
import { useSession } from "../session";

const FORMATS = [
  { id: "focus", label: "FOCUS (FinOps, CSV)" },
  { id: "csv", label: "CSV (ERP lines)" },
  { id: "json", label: "JSON" },
] as const;

function thisMonth(): string {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}`;
}

/** Chargeback exports (a closed month is frozen by the server) and the month's totals per cost object. */
export function FinancePage() {
  const s = useSession();
  const caps = useCapabilities();
  const tree = useTree();
  const toast = useToast();
  const [unitId, setUnitId] = useState("");
  const [period, setPeriod] = useState(thisMonth());
  const [format, setFormat] = useState<string>("focus");
  const [busy, setBusy] = useState(false);
  const index = useMemo(() => (tree.data ? indexTree(tree.data.roots) : null), [tree.data]);
  const exportable = useMemo(() => {
    // Export is for admins, finance and auditors of a unit and everything below it.
    const tops = s.me.scopes.map((x) => x.unit_id);
    const out: TreeNode[] = [];
    const walk = (n: TreeNode, inside: boolean) => {
      const ok = inside || tops.includes(n.id);
      if (ok) out.push(n);
      n.children.forEach((c) => walk(c, ok));
    };
    tree.data?.roots.forEach((r) => walk(r, false));
    return out;
  }, [tree.data, s.me.scopes]);
  const unit = unitId || exportable[0]?.id || "";
  const hasExport = !!caps.data?.has("GET", /\/units\/\{unit_id\}\/export$/);

  const run = async () => {
    setBusy(true);
    try {
      const { blob, filename } = await download(exportPath(unit), { period, format });
      const url = URL.createObjectURL(blob);
      const a = document.createElement("a");
      a.href = url;
      a.download = filename ?? `${s.me.institution_id}-${unit}-${period}.${format === "json" ? "json" : "csv"}`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
      toast("ok", `Export ${a.download} downloaded`);
    } catch (e) {
      toast("error", `Export failed: ${errorText(e)}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="page" aria-labelledby="fin-title">
      <div className="page-head">
        <div>
          <h1 id="fin-title">Finance</h1>
          <p className="muted">Monthly chargeback of AI use to units and cost objects. A closed month is exported once and stays the same, byte for byte.</p>
        </div>
      </div>
      {!caps.isLoading && !hasExport && <Empty>This server has no export route.</Empty>}
      {hasExport && (
        <div className="stack-lg">
          <form
            className="card"
            aria-labelledby="export-title"
            onSubmit={(e) => {
              e.preventDefault();
              void run();
            }}
          >
            <h2 id="export-title" className="with-icon">
              <FileSpreadsheet size={18} aria-hidden="true" /> Export
            </h2>
            {exportable.length === 0 && !tree.isLoading ? (
              <p className="muted">You hold no admin, finance or auditor role, so there is nothing to export.</p>
            ) : (
              <>
                <div className="row-wrap">
                  <label className="field">
                    <span>Scope</span>
                    <select value={unit} onChange={(e) => setUnitId(e.target.value)} name="scope">
                      {exportable.map((u) => (
                        <option key={u.id} value={u.id}>
                          {label(u)} ({u.id})
                        </option>
                      ))}
                    </select>
                  </label>
                  <label className="field">
                    <span>Month</span>
                    <input type="month" name="period" value={period} required onChange={(e) => setPeriod(e.target.value)} />
                  </label>
                </div>
                <fieldset className="field">
                  <legend>Format</legend>
                  <div className="segmented">
                    {FORMATS.map((f) => (
                      <label key={f.id} className={`seg ${format === f.id ? "seg-on" : ""}`}>
                        <input type="radio" name="format" value={f.id} checked={format === f.id} onChange={() => setFormat(f.id)} /> {f.label}
                      </label>
                    ))}
                  </div>
                </fieldset>
                <div className="form-actions">
                  <button type="submit" className="btn btn-primary" disabled={busy || !unit || !/^\d{4}-\d{2}$/.test(period)}>
                    <Download size={16} aria-hidden="true" /> {busy ? "Preparing…" : "Download export"}
                  </button>
                </div>
              </>
            )}
          </form>
          {unit && /^\d{4}-\d{2}$/.test(period) && <Chargeback unitId={unit} period={period} name={(id) => (index?.get(id) ? label(index.get(id)!) : id)} />}
        </div>
      )}
    </section>
  );
}

interface Total {
  key: string;
  funding: string;
  requests: number;
  tokens: number;
  micro: number;
}

function Chargeback({ unitId, period, name }: { unitId: string; period: string; name: (id: string) => string }) {
  const { me } = useSession();
  const q = useQuery({
    queryKey: ["chargeback", unitId, period],
    queryFn: () => api.get<ExportJson>(exportPath(unitId), { period, format: "json" }),
    refetchInterval: 15_000,
  });
  return (
    <section className="card" aria-labelledby="cb-title">
      <h2 id="cb-title">Chargeback totals, {period}</h2>
      <QueryState query={q} label="Totalling…">
        {(doc) => {
          const byObject = new Map<string, Total>();
          const byUnit = new Map<string, Total>();
          for (const l of doc.lines) {
            const micro = moneyToMicro(l.cost);
            for (const [map, key] of [
              [byObject, l.cost_object],
              [byUnit, l.unit_id],
            ] as const) {
              const t = map.get(key) ?? { key, funding: l.funding, requests: 0, tokens: 0, micro: 0 };
              t.requests += l.requests;
              t.tokens += l.input_tokens + l.output_tokens;
              t.micro += micro;
              map.set(key, t);
            }
          }
          const objects = [...byObject.values()].sort((a, b) => b.micro - a.micro);
          const units = [...byUnit.values()].sort((a, b) => b.micro - a.micro);
          if (doc.lines.length === 0) return <p className="muted">No usage charged in {period}.</p>;
          return (
            <div className="grid-2">
              <div>
                <p className="big-number">
                  {money(moneyToMicro(doc.totals.cost), doc.currency || me.currency)}
                  <span className="muted small"> · {doc.totals.requests.toLocaleString()} requests</span>
                </p>
                <table className="table">
                  <caption>By cost object</caption>
                  <thead>
                    <tr>
                      <th scope="col">Cost object</th>
                      <th scope="col">Funding</th>
                      <th scope="col">Tokens</th>
                      <th scope="col">Cost</th>
                    </tr>
                  </thead>
                  <tbody>
                    {objects.map((t) => (
                      <tr key={t.key}>
                        <th scope="row">{t.key}</th>
                        <td>{t.funding}</td>
                        <td>{tokens(t.tokens)}</td>
                        <td>{money(t.micro, doc.currency)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
              <table className="table">
                <caption>By unit</caption>
                <thead>
                  <tr>
                    <th scope="col">Unit</th>
                    <th scope="col">Requests</th>
                    <th scope="col">Cost</th>
                  </tr>
                </thead>
                <tbody>
                  {units.slice(0, 50).map((t) => (
                    <tr key={t.key}>
                      <th scope="row">{name(t.key)}</th>
                      <td>{t.requests.toLocaleString()}</td>
                      <td>{money(t.micro, doc.currency)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          );
        }}
      </QueryState>
    </section>
  );
}
