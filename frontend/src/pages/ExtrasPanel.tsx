import { Plus, Trash2 } from "lucide-react";
import { useState } from "react";
import { useDeleteExtra, useExtras, useSaveExtra, type ExtraBody } from "../api/hooks";
import type { ExtraView, UnitOut } from "../api/types";
import { errorText, QueryState } from "../components/Status";
import { useToast } from "../components/Toasts";
import { amount, dateOnly, microToInput, parseMoney } from "../lib/format";
import { useSession } from "../session";

interface Draft {
  id: string;
  metric: "cost" | "tokens";
  amount: string;
  valid_from: string;
  valid_to: string;
  chargeback: string;
}

const today = () => new Date().toISOString().slice(0, 10);
const empty = (): Draft => ({ id: "", metric: "cost", amount: "", valid_from: today(), valid_to: `${new Date().getFullYear()}-12-31`, chargeback: "" });

/** Extras: funds a unit bought itself (a grant), spent after its allocation, with a chargeback code. */
export function ExtrasPanel({ unit, canEdit }: { unit: UnitOut; canEdit: boolean }) {
  const { me } = useSession();
  const extras = useExtras(unit.id);
  const save = useSaveExtra(unit.id);
  const remove = useDeleteExtra(unit.id);
  const toast = useToast();
  const [draft, setDraft] = useState<Draft | null>(null);
  const [existing, setExisting] = useState(false);

  const amountValue = draft ? (draft.metric === "cost" ? parseMoney(draft.amount) : /^\d+$/.test(draft.amount.trim()) ? Number(draft.amount.trim()) : null) : null;

  const submit = async () => {
    if (!draft || amountValue === null || amountValue <= 0) return;
    const body: ExtraBody = {
      id: draft.id.trim(),
      metric: draft.metric,
      amount: amountValue,
      valid_from: draft.valid_from,
      valid_to: draft.valid_to,
      chargeback: draft.chargeback.trim() || null,
    };
    try {
      await save.mutateAsync({ body, existing });
      toast("ok", `Extra ${body.id} saved`);
      setDraft(null);
    } catch (e) {
      toast("error", `Extra not saved: ${errorText(e)}`);
    }
  };

  const edit = (x: ExtraView) => {
    setExisting(true);
    setDraft({
      id: x.id,
      metric: x.metric,
      amount: x.metric === "cost" ? microToInput(x.amount) : String(x.amount),
      valid_from: x.valid_from,
      valid_to: x.valid_to,
      chargeback: x.chargeback ?? "",
    });
  };

  return (
    <section className="card" aria-labelledby="extras-title">
      <div className="card-head">
        <h2 id="extras-title">Extras</h2>
        {canEdit && !draft && (
          <button
            type="button"
            className="btn btn-small"
            onClick={() => {
              setExisting(false);
              setDraft(empty());
            }}
          >
            <Plus size={14} aria-hidden="true" /> Add extra
          </button>
        )}
      </div>
      <p className="muted small">Grants and cost-centre funds: spent after the unit&apos;s allocation, within their dates, charged to their code.</p>
      <QueryState query={extras}>
        {(list) =>
          list.length === 0 ? (
            <p className="muted">None.</p>
          ) : (
            <div className="table-wrap">
              <table className="table">
                <thead>
                  <tr>
                    <th scope="col">Extra</th>
                    <th scope="col">Amount</th>
                    <th scope="col">Used</th>
                    <th scope="col">Valid</th>
                    <th scope="col">Chargeback</th>
                    {canEdit && <th scope="col"><span className="sr-only">Actions</span></th>}
                  </tr>
                </thead>
                <tbody>
                  {list.map((x) => (
                    <tr key={`${x.id}-${x.metric}`}>
                      <th scope="row">{x.id}</th>
                      <td>{amount(x.metric, x.amount, me.currency)}</td>
                      <td>{amount(x.metric, x.used, me.currency)}</td>
                      <td>
                        {dateOnly(x.valid_from)} – {dateOnly(x.valid_to)} {!x.valid_now && <span className="badge badge-muted">not today</span>}
                      </td>
                      <td>{x.chargeback ?? "—"}</td>
                      {canEdit && (
                        <td className="actions">
                          <button type="button" className="btn btn-small" onClick={() => edit(x)}>
                            Edit
                          </button>
                          <button
                            type="button"
                            className="btn btn-small btn-danger"
                            aria-label={`Remove extra ${x.id}`}
                            onClick={() => {
                              if (window.confirm(`Remove extra ${x.id}?`))
                                remove.mutate(x.id, { onError: (e) => toast("error", errorText(e)), onSuccess: () => toast("ok", `Extra ${x.id} removed`) });
                            }}
                          >
                            <Trash2 size={14} aria-hidden="true" />
                          </button>
                        </td>
                      )}
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )
        }
      </QueryState>
      {draft && (
        <form
          className="subform"
          aria-label={existing ? `Edit extra ${draft.id}` : "New extra"}
          onSubmit={(e) => {
            e.preventDefault();
            void submit();
          }}
        >
          <div className="row-wrap">
            <label className="field">
              <span>Id</span>
              <input value={draft.id} disabled={existing} required pattern="[a-z0-9][a-z0-9_.\-]*" onChange={(e) => setDraft({ ...draft, id: e.target.value })} placeholder="e.g. nsf-2027" />
            </label>
            <label className="field">
              <span>Metric</span>
              <select value={draft.metric} onChange={(e) => setDraft({ ...draft, metric: e.target.value as Draft["metric"] })}>
                <option value="cost">Cost ({me.currency})</option>
                <option value="tokens">Tokens</option>
              </select>
            </label>
            <label className="field">
              <span>Amount</span>
              <input value={draft.amount} required inputMode="decimal" aria-invalid={draft.amount !== "" && amountValue === null} onChange={(e) => setDraft({ ...draft, amount: e.target.value })} />
            </label>
          </div>
          <div className="row-wrap">
            <label className="field">
              <span>Valid from</span>
              <input type="date" value={draft.valid_from} required onChange={(e) => setDraft({ ...draft, valid_from: e.target.value })} />
            </label>
            <label className="field">
              <span>Valid to (inclusive)</span>
              <input type="date" value={draft.valid_to} required min={draft.valid_from} onChange={(e) => setDraft({ ...draft, valid_to: e.target.value })} />
            </label>
            <label className="field">
              <span>Chargeback code</span>
              <input value={draft.chargeback} onChange={(e) => setDraft({ ...draft, chargeback: e.target.value })} placeholder="e.g. GR-2027-14" />
            </label>
          </div>
          <div className="form-actions">
            <button type="submit" className="btn btn-primary" disabled={save.isPending || amountValue === null}>
              {save.isPending ? "Saving…" : "Save extra"}
            </button>
            <button type="button" className="btn" onClick={() => setDraft(null)}>
              Cancel
            </button>
          </div>
        </form>
      )}
    </section>
  );
}
