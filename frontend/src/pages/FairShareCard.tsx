import { Plus, Save, Scale, Trash2 } from "lucide-react";
import { useEffect, useMemo, useState } from "react";
import { ApiError } from "../api/client";
import { useFairShare, useSaveFairShare } from "../api/hooks";
import type { FairShare } from "../api/types";
import { NumberField } from "../components/NumberField";
import { ErrorBox, Loading } from "../components/Status";
import { useToast } from "../components/Toasts";
import { problemsAt } from "../lib/limits";
import { useSession } from "../session";

type Row = { key: string; weight: string };
interface WindowForm {
  name: string;
  from: string;
  to: string;
  weights: Row[];
}
interface Form {
  weights: Row[];
  default_weight: string;
  windows: WindowForm[];
}

const rows = (w: Record<string, number | string>): Row[] => Object.entries(w).map(([key, v]) => ({ key, weight: String(v) }));

export function fairShareForm(f: FairShare | undefined): Form {
  return {
    weights: rows(f?.weights ?? {}),
    default_weight: String(f?.default_weight ?? 1),
    windows: (f?.windows ?? []).map((w) => ({ name: w.name, from: w.from, to: w.to, weights: rows(w.weights) })),
  };
}

const WEIGHT = /^\d+(\.\d{1,6})?$/;
const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** The form as the PUT body, or the problems by path ("weights.0.weight", "windows.1.from", …). */
export function fairShareBody(f: Form): { body: FairShare | null; problems: Record<string, string> } {
  const problems: Record<string, string> = {};
  const weights = (list: Row[], at: string) => {
    const out: Record<string, string> = {};
    list.forEach((r, i) => {
      const key = r.key.trim();
      if (!key && !r.weight.trim()) return;
      if (!key) problems[`${at}.${i}.key`] = "a unit id or unit kind";
      else if (key in out) problems[`${at}.${i}.key`] = `${key} is listed twice`;
      const w = r.weight.trim();
      if (!WEIGHT.test(w) || Number(w) <= 0 || Number(w) > 1000) problems[`${at}.${i}.weight`] = "a weight above 0, at most 1000";
      out[key] = w;
    });
    return out;
  };
  const d = f.default_weight.trim();
  if (!WEIGHT.test(d) || Number(d) <= 0 || Number(d) > 1000) problems.default_weight = "a weight above 0, at most 1000";
  const body: FairShare = {
    weights: weights(f.weights, "weights"),
    default_weight: d,
    windows: f.windows.map((w, i) => {
      if (!w.name.trim()) problems[`windows.${i}.name`] = "a name, e.g. exam weeks";
      if (!DAY.test(w.from)) problems[`windows.${i}.from`] = "a day";
      if (!DAY.test(w.to)) problems[`windows.${i}.to`] = "a day";
      else if (DAY.test(w.from) && w.from > w.to) problems[`windows.${i}.to`] = `on or after ${w.from}`;
      const ws = weights(w.weights, `windows.${i}.weights`);
      if (Object.keys(ws).length === 0) problems[`windows.${i}.weights`] = "at least one weight";
      return { name: w.name.trim(), from: w.from, to: w.to, weights: ws };
    }),
  };
  return { body: Object.keys(problems).length ? null : body, problems };
}

function WeightRows({ at, list, problems, onChange }: { at: string; list: Row[]; problems: Record<string, string>; onChange: (rows: Row[]) => void }) {
  const name = at.replace(/\./g, "-");
  return (
    <div className="stack">
      {list.map((r, i) => (
        <div className="row-wrap" key={i}>
          <label className="field">
            <span>Unit id or kind</span>
            <input name={`${name}-${i}-key`} value={r.key} aria-invalid={!!problems[`${at}.${i}.key`]} onChange={(e) => onChange(list.map((x, j) => (j === i ? { ...x, key: e.target.value } : x)))} />
            {problems[`${at}.${i}.key`] && <span className="field-error">{problems[`${at}.${i}.key`]}</span>}
          </label>
          <NumberField label="Weight" name={`${name}-${i}-weight`} value={r.weight} error={problems[`${at}.${i}.weight`]} onChange={(v) => onChange(list.map((x, j) => (j === i ? { ...x, weight: v } : x)))} />
          <button type="button" className="btn btn-small" aria-label={`Remove weight ${r.key || i + 1}`} onClick={() => onChange(list.filter((_, j) => j !== i))}>
            <Trash2 size={14} aria-hidden="true" />
          </button>
        </div>
      ))}
      {problems[at] && <span className="field-error">{problems[at]}</span>}
      <div>
        <button type="button" className="btn btn-small" onClick={() => onChange([...list, { key: "", weight: "1" }])}>
          <Plus size={14} aria-hidden="true" /> Add weight
        </button>
      </div>
    </div>
  );
}

/**
 * How self-hosted models with slots share them between units while requests wait: weights by unit id
 * or kind, and date windows (e.g. exam weeks) whose weights override the base ones on those days.
 */
export function FairShareCard() {
  const s = useSession();
  const toast = useToast();
  const stored = useFairShare();
  const saved = useMemo(() => fairShareForm(stored.data), [stored.data]);
  const [form, setForm] = useState<Form>(saved);
  const [dirty, setDirty] = useState(false);
  const [serverError, setServerError] = useState<unknown>(null);
  const save = useSaveFairShare();
  useEffect(() => {
    if (!dirty) setForm(saved);
  }, [saved, dirty]);
  if (stored.error instanceof ApiError && stored.error.status === 403) return null;

  const canEdit = s.isInstitutionAdmin;
  const { body, problems: local } = fairShareBody(form);
  // The API names problems by path (weights.<key>, windows.<i>): shown beside the fields, and all in the box.
  const fromApi = problemsAt(serverError instanceof ApiError ? serverError.details : undefined, "");
  const problems = { ...local };
  const change = (f: (x: Form) => Form) => {
    setDirty(true);
    setServerError(null);
    setForm(f);
  };

  return (
    <form
      className="card"
      aria-labelledby="fair-title"
      onSubmit={async (e) => {
        e.preventDefault();
        if (!body) return;
        try {
          await save.mutateAsync(body);
          toast("ok", "Fair-share weights saved");
          setDirty(false);
        } catch (err) {
          setServerError(err);
        }
      }}
    >
      <h2 id="fair-title" className="with-icon">
        <Scale size={18} aria-hidden="true" /> Fair share of GPU slots
      </h2>
      <p className="muted small">
        When every slot of a self-hosted model is busy, waiting requests get the next slot by these weights between units (e.g. teaching 3 : research 1), not first come first served. A key is a unit id or a unit kind (the id wins).
      </p>
      {!canEdit && (
        <p className="notice" role="note">
          Only institution admins change the weights.
        </p>
      )}
      {stored.isLoading && <Loading label="Loading weights…" />}
      {stored.error != null && <ErrorBox error={stored.error} title="The weights could not be read" retry={() => void stored.refetch()} />}
      <fieldset disabled={!canEdit || save.isPending || !stored.data} className="stack">
        <fieldset className="metric-fieldset">
          <legend>Weights</legend>
          <WeightRows at="weights" list={form.weights} problems={problems} onChange={(w) => change((f) => ({ ...f, weights: w }))} />
          <NumberField label="Default weight (units with none)" name="fair-default" value={form.default_weight} error={problems.default_weight} onChange={(v) => change((f) => ({ ...f, default_weight: v }))} />
        </fieldset>
        {form.windows.map((w, i) => (
          <fieldset className="metric-fieldset" key={i}>
            <legend>Window {w.name || i + 1}</legend>
            <div className="row-wrap">
              <label className="field">
                <span>Name</span>
                <input value={w.name} aria-invalid={!!problems[`windows.${i}.name`]} onChange={(e) => change((f) => ({ ...f, windows: f.windows.map((x, j) => (j === i ? { ...x, name: e.target.value } : x)) }))} />
                {problems[`windows.${i}.name`] && <span className="field-error">{problems[`windows.${i}.name`]}</span>}
              </label>
              <label className="field">
                <span>From</span>
                <input type="date" value={w.from} aria-invalid={!!problems[`windows.${i}.from`]} onChange={(e) => change((f) => ({ ...f, windows: f.windows.map((x, j) => (j === i ? { ...x, from: e.target.value } : x)) }))} />
                {problems[`windows.${i}.from`] && <span className="field-error">{problems[`windows.${i}.from`]}</span>}
              </label>
              <label className="field">
                <span>To (included)</span>
                <input type="date" value={w.to} aria-invalid={!!problems[`windows.${i}.to`]} onChange={(e) => change((f) => ({ ...f, windows: f.windows.map((x, j) => (j === i ? { ...x, to: e.target.value } : x)) }))} />
                {problems[`windows.${i}.to`] && <span className="field-error">{problems[`windows.${i}.to`]}</span>}
              </label>
              <button type="button" className="btn btn-small" onClick={() => change((f) => ({ ...f, windows: f.windows.filter((_, j) => j !== i) }))}>
                <Trash2 size={14} aria-hidden="true" /> Remove window
              </button>
            </div>
            <WeightRows at={`windows.${i}.weights`} list={w.weights} problems={problems} onChange={(ws) => change((f) => ({ ...f, windows: f.windows.map((x, j) => (j === i ? { ...x, weights: ws } : x)) }))} />
          </fieldset>
        ))}
        <div>
          <button type="button" className="btn btn-small" onClick={() => change((f) => ({ ...f, windows: [...f.windows, { name: "", from: "", to: "", weights: [{ key: "", weight: "1" }] }] }))}>
            <Plus size={14} aria-hidden="true" /> Add date window
          </button>
        </div>
      </fieldset>
      {serverError != null && (
        <div className="stack">
          <ErrorBox error={serverError} title="The weights were not saved" />
          {Object.keys(fromApi).length > 0 && (
            <ul className="plain-list small" aria-label="Problems">
              {Object.entries(fromApi).map(([path, message]) => (
                <li key={path}>
                  <code>{path || "fair_share"}</code>: {message}
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
      <div className="form-actions">
        <button type="submit" className="btn btn-primary" disabled={!canEdit || !dirty || !body || save.isPending}>
          <Save size={16} aria-hidden="true" /> {save.isPending ? "Saving…" : "Save weights"}
        </button>
        <button
          type="button"
          className="btn"
          disabled={!dirty || save.isPending}
          onClick={() => {
            setForm(saved);
            setDirty(false);
            setServerError(null);
          }}
        >
          Discard changes
        </button>
      </div>
    </form>
  );
}
