import { AlertTriangle, ArrowRight, Eye, Save } from "lucide-react";
import { useEffect, useMemo, useState } from "react";
import { previewBudget, useSaveBudget } from "../api/hooks";
import { PERIODS, type BudgetEffect, type BudgetIn, type Metric, type UnitOut } from "../api/types";
import { errorText, ErrorBox, Loading } from "../components/Status";
import { NumberField } from "../components/NumberField";
import { useToast } from "../components/Toasts";
import { amount, microToInput, parseMoney, periodLabel } from "../lib/format";
import { useSession } from "../session";

type Mode = "fixed" | "percent" | "inherit";
type CapMode = "fixed" | "fair_share" | "none";

interface MetricForm {
  mode: Mode;
  amount: string;
  percent: string;
  capMode: CapMode;
  capAmount: string;
  factor: string;
}

export interface BudgetForm {
  period: string; // "" = the parent's period
  cost: MetricForm;
  tokens: MetricForm;
}

const toText = (metric: Metric, v: number | null) => (v === null ? "" : metric === "cost" ? microToInput(v) : String(v));

export function formOf(b: BudgetIn): BudgetForm {
  const one = (metric: Metric): MetricForm => ({
    mode: b[metric].mode,
    amount: toText(metric, b[metric].amount),
    percent: b[metric].percent === null ? "" : String(b[metric].percent),
    capMode: b.member_cap[metric].mode,
    capAmount: toText(metric, b.member_cap[metric].amount),
    factor: b.member_cap[metric].factor === null ? "" : String(b.member_cap[metric].factor),
  });
  return { period: b.period ?? "", cost: one("cost"), tokens: one("tokens") };
}

function parseAmount(metric: Metric, text: string): number | null {
  if (metric === "cost") return parseMoney(text);
  const t = text.trim().replace(/[,_\s]/g, "");
  return /^\d+$/.test(t) ? Number(t) : null;
}

const DECIMAL = /^\d+(\.\d{1,6})?$/;

/** The form as the API's BudgetIn, or the problems that stop it from being one. */
export function bodyOf(f: BudgetForm): { body: BudgetIn | null; problems: Record<string, string> } {
  const problems: Record<string, string> = {};
  const rule = (metric: Metric) => {
    const m = f[metric];
    if (m.mode === "fixed") {
      const a = parseAmount(metric, m.amount);
      if (a === null) problems[`${metric}.amount`] = metric === "cost" ? "an amount like 100 or 12.50" : "a whole number of tokens";
      return { mode: "fixed" as const, amount: a ?? 0, percent: null };
    }
    if (m.mode === "percent") {
      const p = m.percent.trim();
      if (!DECIMAL.test(p) || Number(p) > 100) problems[`${metric}.percent`] = "a percent from 0 to 100";
      return { mode: "percent" as const, amount: null, percent: p };
    }
    return { mode: "inherit" as const, amount: null, percent: null };
  };
  const cap = (metric: Metric) => {
    const m = f[metric];
    if (m.capMode === "fixed") {
      const a = parseAmount(metric, m.capAmount);
      if (a === null) problems[`${metric}.capAmount`] = metric === "cost" ? "an amount like 5 or 2.50" : "a whole number of tokens";
      return { mode: "fixed" as const, amount: a ?? 0, factor: null };
    }
    if (m.capMode === "fair_share") {
      const x = m.factor.trim();
      if (!DECIMAL.test(x) || Number(x) <= 0) problems[`${metric}.factor`] = "a factor above 0, e.g. 1 or 1.5";
      return { mode: "fair_share" as const, amount: null, factor: x };
    }
    return { mode: "none" as const, amount: null, factor: null };
  };
  const body: BudgetIn = {
    period: (f.period || null) as BudgetIn["period"],
    cost: rule("cost"),
    tokens: rule("tokens"),
    member_cap: { cost: cap("cost"), tokens: cap("tokens") },
  };
  return { body: Object.keys(problems).length ? null : body, problems };
}

function useDebounced<T>(value: T, ms: number): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = window.setTimeout(() => setV(value), ms);
    return () => window.clearTimeout(t);
  }, [value, ms]);
  return v;
}

export function BudgetEditor({ unit, canEdit }: { unit: UnitOut; canEdit: boolean }) {
  const { me } = useSession();
  const toast = useToast();
  const saved = useMemo(() => formOf(unit.budget), [unit.budget]);
  const [form, setForm] = useState<BudgetForm>(saved);
  const [dirty, setDirty] = useState(false);
  // A refetch (another admin saved, or our own save) resets an untouched form to the server's.
  useEffect(() => {
    if (!dirty) setForm(saved);
  }, [saved, dirty]);

  const { body, problems } = bodyOf(form);
  const key = JSON.stringify(body);
  const debounced = useDebounced(key, 350);
  const [preview, setPreview] = useState<{ key: string; effect?: BudgetEffect; error?: unknown } | null>(null);
  const save = useSaveBudget(unit.id);

  useEffect(() => {
    if (!canEdit || !dirty || debounced === "null") return;
    const ctl = new AbortController();
    previewBudget(unit.id, JSON.parse(debounced) as BudgetIn, ctl.signal).then(
      (effect) => setPreview({ key: debounced, effect }),
      (error) => {
        if (!ctl.signal.aborted) setPreview({ key: debounced, error });
      },
    );
    return () => ctl.abort();
  }, [debounced, unit.id, canEdit, dirty]);

  const set = (metric: Metric, patch: Partial<MetricForm>) => {
    setDirty(true);
    setForm((f) => ({ ...f, [metric]: { ...f[metric], ...patch } }));
  };

  const onSave = async () => {
    if (!body) return;
    try {
      await save.mutateAsync(body);
      toast("ok", `Budget of ${unit.name ?? unit.id} saved`);
      setDirty(false);
      setPreview(null);
    } catch (e) {
      toast("error", `Not saved: ${errorText(e)}`);
    }
  };

  const pending = dirty && body !== null && (preview?.key !== key || debounced !== key);
  const effect = preview?.key === key ? preview.effect : undefined;
  const previewError = preview?.key === key ? preview.error : undefined;

  return (
    <div className="grid-editor">
      <form
        className="card"
        aria-labelledby="alloc-title"
        onSubmit={(e) => {
          e.preventDefault();
          void onSave();
        }}
      >
        <h2 id="alloc-title">Allocation</h2>
        {!canEdit && (
          <p className="notice" role="note">
            A unit&apos;s budget is set by an admin of a unit above it. You can read it here.
          </p>
        )}
        <fieldset disabled={!canEdit || save.isPending} className="stack">
          <label className="field">
            <span>Period</span>
            <select
              value={form.period}
              onChange={(e) => {
                setDirty(true);
                setForm((f) => ({ ...f, period: e.target.value }));
              }}
            >
              <option value="">The parent&apos;s period</option>
              {PERIODS.map((p) => (
                <option key={p} value={p}>
                  {p} ({periodLabel(p)})
                </option>
              ))}
            </select>
          </label>
          {(["cost", "tokens"] as Metric[]).map((metric) => (
            <MetricFields key={metric} metric={metric} value={form[metric]} problems={problems} currency={me.currency} onChange={(p) => set(metric, p)} />
          ))}
        </fieldset>
        <div className="form-actions">
          <button type="submit" className="btn btn-primary" disabled={!canEdit || !dirty || !body || save.isPending}>
            <Save size={16} aria-hidden="true" /> {save.isPending ? "Saving…" : "Save budget"}
          </button>
          <button
            type="button"
            className="btn"
            disabled={!dirty || save.isPending}
            onClick={() => {
              setForm(saved);
              setDirty(false);
              setPreview(null);
            }}
          >
            Discard changes
          </button>
        </div>
      </form>

      <section className="card preview" aria-labelledby="preview-title" aria-live="polite" aria-busy={pending}>
        <h2 id="preview-title">
          <Eye size={18} aria-hidden="true" /> Preview
        </h2>
        {!dirty && <p className="muted">Change the allocation to see the caps of every unit below it, before anything is saved.</p>}
        {dirty && !body && <p className="muted">Fix the highlighted fields to see the preview.</p>}
        {dirty && body && pending && !effect && <Loading label="Working out the new caps…" />}
        {dirty && body && previewError !== undefined && <ErrorBox error={previewError} title="This allocation would not be accepted" />}
        {dirty && effect && <EffectView effect={effect} currency={me.currency} />}
      </section>
    </div>
  );
}

function MetricFields({
  metric,
  value,
  problems,
  currency,
  onChange,
}: {
  metric: Metric;
  value: MetricForm;
  problems: Record<string, string>;
  currency: string;
  onChange: (p: Partial<MetricForm>) => void;
}) {
  const title = metric === "cost" ? `Cost (${currency})` : "Tokens";
  const unitText = metric === "cost" ? currency : "tokens";
  const err = (k: string) => problems[`${metric}.${k}`];
  return (
    <fieldset className="metric-fieldset" data-metric={metric}>
      <legend>{title}</legend>
      <div className="row-wrap">
        <label className="field">
          <span>Mode</span>
          <select name={`${metric}-mode`} value={value.mode} onChange={(e) => onChange({ mode: e.target.value as Mode })}>
            <option value="inherit">Inherit (no cap of its own)</option>
            <option value="fixed">Fixed amount</option>
            <option value="percent">Percent of parent&apos;s cap</option>
          </select>
        </label>
        {value.mode === "fixed" && (
          <NumberField label={`Amount (${unitText})`} name={`${metric}-amount`} value={value.amount} error={err("amount")} onChange={(v) => onChange({ amount: v })} />
        )}
        {value.mode === "percent" && (
          <NumberField label="Percent" name={`${metric}-percent`} suffix="%" value={value.percent} error={err("percent")} onChange={(v) => onChange({ percent: v })} />
        )}
      </div>
      <div className="row-wrap">
        <label className="field">
          <span>Member cap</span>
          <select name={`${metric}-member-mode`} value={value.capMode} onChange={(e) => onChange({ capMode: e.target.value as CapMode })}>
            <option value="none">None</option>
            <option value="fixed">Fixed per member</option>
            <option value="fair_share">Fair share (cap ÷ members × factor)</option>
          </select>
        </label>
        {value.capMode === "fixed" && (
          <NumberField label={`Per member (${unitText})`} name={`${metric}-member-amount`} value={value.capAmount} error={err("capAmount")} onChange={(v) => onChange({ capAmount: v })} />
        )}
        {value.capMode === "fair_share" && (
          <NumberField label="Factor" name={`${metric}-factor`} value={value.factor} error={err("factor")} onChange={(v) => onChange({ factor: v })} />
        )}
      </div>
    </fieldset>
  );
}

export function EffectView({ effect, currency }: { effect: BudgetEffect; currency: string }) {
  const changed = effect.units.filter((u) => ["cost", "tokens"].some((m) => u.caps_before[m] !== u.caps_after[m]));
  return (
    <div className="stack" data-testid="budget-preview">
      <p className="small">
        {changed.length === 0 ? "No cap changes." : `${changed.length} unit${changed.length === 1 ? "" : "s"} would get a new cap.`}{" "}
        {effect.warnings.length > 0 ? `${effect.warnings.length} warning${effect.warnings.length === 1 ? "" : "s"}.` : "No warnings."}
      </p>
      {effect.warnings.length > 0 && (
        <ul className="warn-list" aria-label="Warnings after this change">
          {effect.warnings.map((w, i) => (
            <li key={i}>
              <AlertTriangle size={16} aria-hidden="true" />
              <span>
                <strong>{w.code === "over_allocated" ? "Over-allocated" : "Cap below current spend"}</strong> — {w.message}
              </span>
            </li>
          ))}
        </ul>
      )}
      <div className="table-wrap">
        <table className="table">
          <caption className="sr-only">Caps of this unit and every unit below it, before and after</caption>
          <thead>
            <tr>
              <th scope="col">Unit</th>
              <th scope="col">Cost cap</th>
              <th scope="col">Member cap</th>
              <th scope="col">Spent</th>
              <th scope="col" className="hide-sm">
                Token cap
              </th>
            </tr>
          </thead>
          <tbody>
            {effect.units.map((u) => {
              const diff = u.caps_before.cost !== u.caps_after.cost;
              const below = u.caps_after.cost !== null && (u.used.cost ?? 0) > (u.caps_after.cost ?? 0);
              return (
                <tr key={u.unit_id} className={diff ? "row-changed" : ""}>
                  <th scope="row">
                    {u.name ?? u.unit_id}
                    <div className="muted small">{u.unit_id}</div>
                  </th>
                  <td>
                    {diff ? (
                      <span className="change">
                        <s className="muted">{amount("cost", u.caps_before.cost, currency)}</s>
                        <ArrowRight size={12} aria-label="becomes" />
                        <strong>{amount("cost", u.caps_after.cost, currency)}</strong>
                      </span>
                    ) : (
                      amount("cost", u.caps_after.cost, currency)
                    )}
                  </td>
                  <td>{u.member_caps_after.cost === null ? "—" : amount("cost", u.member_caps_after.cost, currency)}</td>
                  <td className={below ? "text-danger" : ""}>{amount("cost", u.used.cost, currency)}</td>
                  <td className="hide-sm">
                    {u.caps_before.tokens !== u.caps_after.tokens ? (
                      <span className="change">
                        <s className="muted">{amount("tokens", u.caps_before.tokens, currency)}</s>
                        <ArrowRight size={12} aria-label="becomes" />
                        <strong>{amount("tokens", u.caps_after.tokens, currency)}</strong>
                      </span>
                    ) : (
                      amount("tokens", u.caps_after.tokens, currency)
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </div>
  );
}
