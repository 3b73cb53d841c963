import { useEffect, useState } from "react";
import { usePolicy, useSavePolicy } from "../api/hooks";
import type { PolicyOut, UnitOut } from "../api/types";
import { errorText, QueryState } from "../components/Status";
import { useToast } from "../components/Toasts";

/** Which models a unit may use (within its parent's) and its default model. */
export function PolicyPanel({ unit, canEdit }: { unit: UnitOut; canEdit: boolean }) {
  const policy = usePolicy(unit.id);
  return <QueryState query={policy}>{(p) => <PolicyForm policy={p} canEdit={canEdit} />}</QueryState>;
}

function PolicyForm({ policy, canEdit }: { policy: PolicyOut; canEdit: boolean }) {
  const save = useSavePolicy(policy.unit_id);
  const toast = useToast();
  const [inherit, setInherit] = useState(policy.models === null);
  const [chosen, setChosen] = useState<Set<string>>(new Set(policy.models ?? policy.parent_models));
  const [def, setDef] = useState(policy.default_model ?? "");
  useEffect(() => {
    setInherit(policy.models === null);
    setChosen(new Set(policy.models ?? policy.parent_models));
    setDef(policy.default_model ?? "");
  }, [policy]);

  const available = inherit ? policy.parent_models : policy.parent_models.filter((m) => chosen.has(m));

  return (
    <form
      className="card"
      aria-labelledby="policy-title"
      onSubmit={async (e) => {
        e.preventDefault();
        try {
          await save.mutateAsync({ models: inherit ? null : policy.parent_models.filter((m) => chosen.has(m)), default_model: def || null });
          toast("ok", "Model policy saved");
        } catch (err) {
          toast("error", `Not saved: ${errorText(err)}`);
        }
      }}
    >
      <h2 id="policy-title">Model policy</h2>
      <p className="muted small">
        Effective now: <strong>{policy.effective_models.join(", ") || "no models"}</strong>
      </p>
      <fieldset disabled={!canEdit || save.isPending} className="stack">
        <label className="check">
          <input type="checkbox" checked={inherit} onChange={(e) => setInherit(e.target.checked)} /> Every model the parent allows
        </label>
        <fieldset className="model-grid" disabled={inherit}>
          <legend>Allowed models</legend>
          {policy.parent_models.map((m) => (
            <label key={m} className="check">
              <input
                type="checkbox"
                checked={inherit || chosen.has(m)}
                onChange={(e) => {
                  const next = new Set(chosen);
                  if (e.target.checked) next.add(m);
                  else next.delete(m);
                  setChosen(next);
                }}
              />
              <code>{m}</code>
            </label>
          ))}
        </fieldset>
        <label className="field">
          <span>Default model</span>
          <select value={def} onChange={(e) => setDef(e.target.value)}>
            <option value="">None (the first allowed)</option>
            {available.map((m) => (
              <option key={m} value={m}>
                {m}
              </option>
            ))}
          </select>
        </label>
      </fieldset>
      {canEdit ? (
        <div className="form-actions">
          <button type="submit" className="btn btn-primary" disabled={save.isPending}>
            {save.isPending ? "Saving…" : "Save model policy"}
          </button>
        </div>
      ) : (
        <p className="notice" role="note">
          Set by an admin of a unit above this one.
        </p>
      )}
    </form>
  );
}
