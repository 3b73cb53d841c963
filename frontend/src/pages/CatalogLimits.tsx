import { Save } from "lucide-react";
import { useState } from "react";
import { ApiError } from "../api/client";
import { useSaveModelPrice, useSaveProvider } from "../api/hooks";
import type { LiveNode, OfferOut, ProviderOut, QueueConfig } from "../api/types";
import { LimitFields } from "../components/LimitFields";
import { LiveNodes } from "../components/LimitMeter";
import { NumberField } from "../components/NumberField";
import { ErrorBox } from "../components/Status";
import { useToast } from "../components/Toasts";
import { contractBody, contractForm, modelBody, providerBody, SELF_HOSTED, type ContractForm } from "../lib/catalog";
import { limitsBody, limitsForm, limitsText, problemsAt, type LimitsForm } from "../lib/limits";

/** "4,000 USD a month" */
export function contractText(c: OfferOut["contract"], currency: string): string {
  if (!c) return "none";
  return `${Number(c.cost).toLocaleString()} ${currency} a ${c.period}`;
}

function ContractFields({ name, value, problem, currency, onChange }: { name: string; value: ContractForm; problem?: string; currency: string; onChange: (p: Partial<ContractForm>) => void }) {
  return (
    <fieldset className="metric-fieldset" data-contract={name}>
      <legend>Contract ceiling</legend>
      <p className="muted small">Committed spend that no sum of unit budgets can pass. Leave the amount empty for none.</p>
      <div className="row-wrap">
        <NumberField label={`Amount (${currency})`} name={`${name}-contract-cost`} value={value.cost} placeholder="none" error={problem} onChange={(v) => onChange({ cost: v })} />
        <label className="field">
          <span>Per</span>
          <select name={`${name}-contract-period`} value={value.period} onChange={(e) => onChange({ period: e.target.value as ContractForm["period"] })}>
            <option value="month">calendar month</option>
            <option value="year">calendar year</option>
          </select>
        </label>
      </div>
    </fieldset>
  );
}

interface QueueForm {
  slots: string;
  max_wait_seconds: string;
  max_waiting: string;
  retry_after_seconds: string;
}

const QUEUE_DEFAULTS: QueueConfig = { max_wait_seconds: 30, max_waiting: 1000, retry_after_seconds: 5 };

function queueForm(o: OfferOut): QueueForm {
  const q = o.queue ?? QUEUE_DEFAULTS;
  return { slots: o.slots == null ? "" : String(o.slots), max_wait_seconds: String(q.max_wait_seconds), max_waiting: String(q.max_waiting), retry_after_seconds: String(q.retry_after_seconds) };
}

function queueBody(f: QueueForm): { slots: number | null; queue: QueueConfig | null; problems: Record<string, string> } {
  const problems: Record<string, string> = {};
  const whole = (k: keyof QueueForm, lo: number, hi: number) => {
    const t = f[k].trim();
    if (!/^\d+$/.test(t) || Number(t) < lo || Number(t) > hi) problems[k] = `a whole number from ${lo} to ${hi.toLocaleString()}`;
    return Number(t);
  };
  if (!f.slots.trim()) return { slots: null, queue: null, problems };
  const slots = whole("slots", 1, 100_000);
  const wait = f.max_wait_seconds.trim();
  if (!/^\d+(\.\d+)?$/.test(wait) || Number(wait) <= 0 || Number(wait) > 300) problems.max_wait_seconds = "seconds, above 0 and at most 300";
  const queue = { max_wait_seconds: Number(wait), max_waiting: whole("max_waiting", 1, 100_000), retry_after_seconds: whole("retry_after_seconds", 1, 120) };
  return { slots, queue, problems };
}

function Actions({ saving, disabled, onCancel }: { saving: boolean; disabled: boolean; onCancel: () => void }) {
  return (
    <div className="form-actions">
      <button type="submit" className="btn btn-primary btn-small" disabled={disabled || saving}>
        <Save size={14} aria-hidden="true" /> {saving ? "Saving…" : "Save limits"}
      </button>
      <button type="button" className="btn btn-small" onClick={onCancel}>
        Cancel
      </button>
    </div>
  );
}

/** A model's limits, contract and (self-hosted) slots and queue, saved through the model's PUT. */
export function ModelLimitsEditor({ offer, providerType, currency, onDone }: { offer: OfferOut; providerType: string; currency: string; onDone: () => void }) {
  const [limits, setLimits] = useState<LimitsForm>(limitsForm(offer.limits));
  const [contract, setContract] = useState<ContractForm>(contractForm(offer.contract));
  const [queue, setQueue] = useState<QueueForm>(queueForm(offer));
  const [error, setError] = useState<unknown>(null);
  const save = useSaveModelPrice();
  const toast = useToast();
  const selfHosted = SELF_HOSTED.has(providerType);
  const l = limitsBody(limits);
  const c = contractBody(contract);
  const q = queueBody(queue);
  const ok = Object.keys(l.problems).length === 0 && !c.problem && (!selfHosted || Object.keys(q.problems).length === 0);
  const details = error instanceof ApiError ? error.details : undefined;
  const name = `model-${offer.provider_id}-${offer.id}`.replace(/[^A-Za-z0-9_-]/g, "_");
  return (
    <form
      className="stack"
      aria-label={`Limits of ${offer.id}`}
      onSubmit={async (e) => {
        e.preventDefault();
        if (!ok) return;
        try {
          const patch = { limits: l.body, contract: c.body, ...(selfHosted ? { slots: q.slots, queue: q.queue } : {}) };
          await save.mutateAsync({ provider: offer.provider_id, model: offer.id, body: modelBody(offer, patch) });
          toast("ok", `Limits of ${offer.id} saved`);
          onDone();
        } catch (err) {
          setError(err);
        }
      }}
    >
      <LimitFields legend={`Rate limits of ${offer.id}`} name={`${name}-limits`} hint="Institution-wide, over every gateway replica." value={limits} problems={{ ...problemsAt(details, "limits"), ...l.problems }} onChange={(p) => setLimits((f) => ({ ...f, ...p }))} />
      <ContractFields name={name} value={contract} currency={currency} problem={c.problem ?? problemsAt(details, "contract").cost} onChange={(p) => setContract((f) => ({ ...f, ...p }))} />
      {selfHosted && (
        <fieldset className="metric-fieldset">
          <legend>GPU slots and fair queue</legend>
          <p className="muted small">Concurrent requests over all replicas; more wait in a queue shared by weight between units. Leave slots empty for no queue.</p>
          <div className="row-wrap">
            <NumberField label="Slots" name={`${name}-slots`} value={queue.slots} placeholder="no queue" error={q.problems.slots} onChange={(v) => setQueue((f) => ({ ...f, slots: v }))} />
            {queue.slots.trim() && (
              <>
                <NumberField label="Max wait" suffix="s" name={`${name}-max-wait`} value={queue.max_wait_seconds} error={q.problems.max_wait_seconds} onChange={(v) => setQueue((f) => ({ ...f, max_wait_seconds: v }))} />
                <NumberField label="Max waiting" name={`${name}-max-waiting`} value={queue.max_waiting} error={q.problems.max_waiting} onChange={(v) => setQueue((f) => ({ ...f, max_waiting: v }))} />
                <NumberField label="Retry after" suffix="s" name={`${name}-retry-after`} value={queue.retry_after_seconds} error={q.problems.retry_after_seconds} onChange={(v) => setQueue((f) => ({ ...f, retry_after_seconds: v }))} />
              </>
            )}
          </div>
        </fieldset>
      )}
      {error != null && <ErrorBox error={error} title={`The limits of ${offer.id} were not saved`} />}
      <Actions saving={save.isPending} disabled={!ok} onCancel={onDone} />
    </form>
  );
}

/** A provider's contract rate limits and committed-spend ceiling, saved through the provider's PUT. */
export function ProviderLimitsEditor({ provider, currency, onDone }: { provider: ProviderOut; currency: string; onDone: () => void }) {
  const [limits, setLimits] = useState<LimitsForm>(limitsForm(provider.options.limits as OfferOut["limits"]));
  const [contract, setContract] = useState<ContractForm>(contractForm(provider.options.contract as OfferOut["contract"]));
  const [error, setError] = useState<unknown>(null);
  const save = useSaveProvider();
  const toast = useToast();
  const l = limitsBody(limits);
  const c = contractBody(contract);
  const { body, blocked } = providerBody(provider, l.body, c.body);
  const ok = Object.keys(l.problems).length === 0 && !c.problem && body !== null;
  const details = error instanceof ApiError ? error.details : undefined;
  const name = `provider-${provider.id}`.replace(/[^A-Za-z0-9_-]/g, "_");
  return (
    <form
      className="stack"
      aria-label={`Limits of provider ${provider.id}`}
      onSubmit={async (e) => {
        e.preventDefault();
        if (!ok || !body) return;
        try {
          await save.mutateAsync({ provider: provider.id, body });
          toast("ok", `Limits of ${provider.id} saved`);
          onDone();
        } catch (err) {
          setError(err);
        }
      }}
    >
      {blocked && (
        <p className="notice" role="note">
          Not editable here: {blocked}.
        </p>
      )}
      <fieldset disabled={!!blocked} className="stack">
        <LimitFields legend={`Rate limits of ${provider.id}`} name={`${name}-limits`} hint="The contract's limits, institution-wide over every gateway replica." value={limits} problems={{ ...problemsAt(details, "limits"), ...l.problems }} onChange={(p) => setLimits((f) => ({ ...f, ...p }))} />
        <ContractFields name={name} value={contract} currency={currency} problem={c.problem ?? problemsAt(details, "contract").cost} onChange={(p) => setContract((f) => ({ ...f, ...p }))} />
      </fieldset>
      {error != null && <ErrorBox error={error} title={`The limits of ${provider.id} were not saved`} />}
      <Actions saving={save.isPending} disabled={!ok} onCancel={onDone} />
    </form>
  );
}

/** Live use of a provider's own limits and its models' limits. */
export function ProviderLive({ provider, nodes, atMs, timeZone }: { provider: ProviderOut; nodes: LiveNode[]; atMs: number; timeZone?: string }) {
  // Node ids: p:<provider> and pm:<provider>|<model> ('|' is in neither id, '/' may be).
  const mine = nodes.filter((n) => n.node === `p:${provider.id}` || n.node.startsWith(`pm:${provider.id}|`));
  if (mine.length === 0) return null;
  return (
    <div className="stack">
      <h3 className="metric-title">Live use</h3>
      <LiveNodes nodes={mine} atMs={atMs} timeZone={timeZone} empty="" />
    </div>
  );
}

export { limitsText };
