import { Gauge, Save } from "lucide-react";
import { useEffect, useMemo, useState } from "react";
import { ApiError } from "../api/client";
import { useLiveLimits, useSaveUnitLimits, useUnitLimits } from "../api/hooks";
import type { UnitLimits, UnitOut } from "../api/types";
import { LimitFields } from "../components/LimitFields";
import { LiveNodes } from "../components/LimitMeter";
import { ErrorBox, Loading } from "../components/Status";
import { useToast } from "../components/Toasts";
import { limitsBody, limitsForm, limitsText, problemsAt, type LimitsForm } from "../lib/limits";
import { useSession } from "../session";

interface Form {
  limits: LimitsForm;
  member_limits: LimitsForm;
}

const formOf = (l: UnitLimits | undefined): Form => ({ limits: limitsForm(l?.limits), member_limits: limitsForm(l?.member_limits) });

/** The form as the PUT body (both keys, null for "no limit"), or null while a field is wrong. */
export function limitsCardBody(f: Form): { body: UnitLimits | null; problems: Record<"limits" | "member_limits", Record<string, string>> } {
  const a = limitsBody(f.limits);
  const b = limitsBody(f.member_limits);
  const problems = { limits: a.problems as Record<string, string>, member_limits: b.problems as Record<string, string> };
  const ok = Object.keys(a.problems).length === 0 && Object.keys(b.problems).length === 0;
  return { body: ok ? { limits: a.body, member_limits: b.body } : null, problems };
}

/**
 * A unit's rate limits: `limits` for its whole subtree together and `member_limits` for each member
 * on their own, edited by an admin above the unit; below, live use against every limit on the
 * unit's path (and one member's, when named), refreshed every few seconds.
 */
export function LimitsCard({ unit, canEdit }: { unit: UnitOut; canEdit: boolean }) {
  const { me } = useSession();
  const toast = useToast();
  const stored = useUnitLimits(unit.id);
  const saved = useMemo(() => formOf(stored.data), [stored.data]);
  const [form, setForm] = useState<Form>(saved);
  const [dirty, setDirty] = useState(false);
  const [serverError, setServerError] = useState<unknown>(null);
  const [member, setMember] = useState("");
  const save = useSaveUnitLimits(unit.id);
  const live = useLiveLimits(unit.id, member.trim());

  useEffect(() => {
    if (!dirty) setForm(saved);
  }, [saved, dirty]);

  const { body, problems } = limitsCardBody(form);
  const apiDetails = serverError instanceof ApiError ? serverError.details : undefined;
  const fieldProblems = (key: "limits" | "member_limits") => ({ ...problemsAt(apiDetails, key), ...problems[key] });

  const set = (key: keyof Form, patch: Partial<LimitsForm>) => {
    setDirty(true);
    setServerError(null);
    setForm((f) => ({ ...f, [key]: { ...f[key], ...patch } }));
  };

  const onSave = async () => {
    if (!body) return;
    try {
      await save.mutateAsync(body);
      toast("ok", `Limits of ${unit.name ?? unit.id} saved`);
      setDirty(false);
      setServerError(null);
    } catch (e) {
      setServerError(e);
    }
  };

  return (
    <div className="grid-editor">
      <form
        className="card"
        aria-labelledby="limits-title"
        onSubmit={(e) => {
          e.preventDefault();
          void onSave();
        }}
      >
        <h2 id="limits-title" className="with-icon">
          <Gauge size={18} aria-hidden="true" /> Limits
        </h2>
        <p className="muted small">
          Per minute over a sliding 60-second window, and requests in progress at once. A request must fit every limit on its path. Leave a field empty for no limit.
        </p>
        {!canEdit && (
          <p className="notice" role="note">
            A unit&apos;s limits are set by an admin of a unit above it. You can read them here.
          </p>
        )}
        {stored.isLoading && <Loading label="Loading limits…" />}
        {stored.error != null && <ErrorBox error={stored.error} title="The limits could not be read" retry={() => void stored.refetch()} />}
        <fieldset disabled={!canEdit || save.isPending || !stored.data} className="stack">
          <LimitFields legend="Whole unit" name="unit" hint="Everyone under this unit together." value={form.limits} problems={fieldProblems("limits")} onChange={(p) => set("limits", p)} />
          <LimitFields legend="Each member" name="member" hint="Each person on their own, over all their use under this unit." value={form.member_limits} problems={fieldProblems("member_limits")} onChange={(p) => set("member_limits", p)} />
        </fieldset>
        {serverError != null && <ErrorBox error={serverError} title="The limits were not saved" />}
        <div className="form-actions">
          <button type="submit" className="btn btn-primary" disabled={!canEdit || !dirty || !body || save.isPending}>
            <Save size={16} aria-hidden="true" /> {save.isPending ? "Saving…" : "Save limits"}
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
        {stored.data && (
          <dl className="facts">
            <dt>Saved, whole unit</dt>
            <dd>{limitsText(stored.data.limits)}</dd>
            <dt>Saved, each member</dt>
            <dd>{limitsText(stored.data.member_limits)}</dd>
          </dl>
        )}
      </form>

      <section className="card" aria-labelledby="live-title" aria-live="polite">
        <h2 id="live-title">Live use</h2>
        <label className="field">
          <span>Member (user id, for member limits)</span>
          <input value={member} onChange={(e) => setMember(e.target.value)} placeholder="e.g. alice" maxLength={128} />
        </label>
        {live.isLoading && <Loading label="Reading live use…" />}
        {live.error != null && <ErrorBox error={live.error} title="Live use could not be read" />}
        {live.data && (
          <LiveNodes
            nodes={live.data.nodes.filter((n) => n.what === "unit" || n.what === "member")}
            atMs={live.data.at_ms}
            timeZone={me.timezone}
            empty={member.trim() ? "No limits on this unit's path." : "No unit limits on this unit's path; name a member to see member limits."}
          />
        )}
      </section>
    </div>
  );
}
