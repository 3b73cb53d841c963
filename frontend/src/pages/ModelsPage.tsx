import { Server } from "lucide-react";
import { Fragment, useState } from "react";
import { useLiveLimits, useProviders, useSaveModelPrice, useTree } from "../api/hooks";
import type { LiveOut, OfferOut, ProviderOut } from "../api/types";
import { errorText, QueryState } from "../components/Status";
import { useToast } from "../components/Toasts";
import { microToInput, money, parseMoney } from "../lib/format";
import { modelBody } from "../lib/catalog";
import { limitsText } from "../lib/limits";
import { indexTree, label } from "../lib/tree";
import { useSession } from "../session";
import { contractText, ModelLimitsEditor, ProviderLimitsEditor, ProviderLive } from "./CatalogLimits";
import { FairShareCard } from "./FairShareCard";
import { PolicyPanel } from "./PolicyPanel";

/** The model catalog (providers, models, prices per 1M tokens) and each unit's model policy. */
export function ModelsPage() {
  const s = useSession();
  const providers = useProviders();
  const live = useLiveLimits("", "", !!providers.data);
  const tree = useTree();
  const [unitId, setUnitId] = useState("");
  const index = tree.data ? indexTree(tree.data.roots) : null;
  const units = index ? [...index.values()].sort((a, b) => label(a).localeCompare(label(b))) : [];
  const chosen = unitId || tree.data?.roots[0]?.id || "";
  const unit = index?.get(chosen);
  const above = (id: string) => {
    const path: string[] = [];
    let cur = index?.get(id);
    while (cur?.parent_id) {
      path.push(cur.parent_id);
      cur = index?.get(cur.parent_id);
    }
    return path;
  };
  const canEdit = !!unit && (s.me.scopes.some((x) => x.role === "admin" && above(unit.id).includes(x.unit_id)) || (s.isInstitutionAdmin && unit.parent_id === null));

  return (
    <section className="page" aria-labelledby="models-title">
      <div className="page-head">
        <div>
          <h1 id="models-title">Models</h1>
          <p className="muted">Providers, models and prices of the institution, and which models each unit may use.</p>
        </div>
      </div>
      <div className="stack-lg">
        <div className="card">
          <h2>Model policy per unit</h2>
          <label className="field">
            <span>Unit</span>
            <select value={chosen} onChange={(e) => setUnitId(e.target.value)}>
              {units.slice(0, 3000).map((u) => (
                <option key={u.id} value={u.id}>
                  {label(u)} ({u.id})
                </option>
              ))}
            </select>
          </label>
        </div>
        {unit && <PolicyPanel key={unit.id} unit={unit} canEdit={canEdit} />}
        <QueryState query={providers} label="Loading providers…">
          {(list) => (
            <div className="stack-lg">
              {list.map((p) => (
                <ProviderCard key={p.id} provider={p} live={live.data} />
              ))}
            </div>
          )}
        </QueryState>
        <FairShareCard />
      </div>
    </section>
  );
}

function ProviderCard({ provider: p, live }: { provider: ProviderOut; live: LiveOut | undefined }) {
  const s = useSession();
  const [editing, setEditing] = useState(false);
  const currency = s.me.currency;
  return (
    <section className="card" aria-labelledby={`prov-${p.id}`}>
      <div className="card-head">
        <h2 id={`prov-${p.id}`} className="with-icon">
          <Server size={18} aria-hidden="true" /> {p.id}
        </h2>
        <span className="badge">{p.type}</span>
      </div>
      <p className="muted small">
        <code>{p.base_url}</code>
        {p.api_key_env && <> · key from <code>{p.api_key_env}</code></>}
      </p>
      <dl className="facts">
        <dt>Rate limits</dt>
        <dd>{limitsText(p.options.limits as OfferOut["limits"])}</dd>
        <dt>Contract ceiling</dt>
        <dd>{contractText(p.options.contract as OfferOut["contract"], currency)}</dd>
      </dl>
      {s.isInstitutionAdmin &&
        (editing ? (
          <ProviderLimitsEditor provider={p} currency={currency} onDone={() => setEditing(false)} />
        ) : (
          <div className="form-actions">
            <button type="button" className="btn btn-small" onClick={() => setEditing(true)} aria-label={`Edit limits of provider ${p.id}`}>
              Edit provider limits
            </button>
          </div>
        ))}
      {live && <ProviderLive provider={p} nodes={live.nodes} atMs={live.at_ms} timeZone={s.me.timezone} />}
      <div className="table-wrap">
        <table className="table">
          <thead>
            <tr>
              <th scope="col">Model</th>
              <th scope="col">Input / 1M tok</th>
              <th scope="col">Output / 1M tok</th>
              <th scope="col" className="hide-sm">
                Max output
              </th>
              <th scope="col" className="hide-sm">
                Price
              </th>
              <th scope="col">Limits</th>
              {s.isInstitutionAdmin && (
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              )}
            </tr>
          </thead>
          <tbody>
            {p.models.map((m) => (
              <ModelRow key={m.id} offer={m} providerType={p.type} editable={s.isInstitutionAdmin} currency={currency} />
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

function ModelRow({ offer, providerType, editable, currency }: { offer: OfferOut; providerType: string; editable: boolean; currency: string }) {
  const [editing, setEditing] = useState(false);
  const [editingLimits, setEditingLimits] = useState(false);
  const [inp, setInp] = useState(microToInput(offer.input_per_mtok));
  const [out, setOut] = useState(microToInput(offer.output_per_mtok));
  const save = useSaveModelPrice();
  const toast = useToast();
  const i = parseMoney(inp);
  const o = parseMoney(out);
  return (
    <Fragment>
    <tr>
      <th scope="row">
        <code>{offer.id}</code>
        {offer.vision && <span className="badge">vision</span>}
        <div className="muted small">upstream {offer.upstream}</div>
      </th>
      {editing ? (
        <>
          <td>
            <input aria-label={`Input price of ${offer.id}`} value={inp} onChange={(e) => setInp(e.target.value)} aria-invalid={i === null} size={8} />
          </td>
          <td>
            <input aria-label={`Output price of ${offer.id}`} value={out} onChange={(e) => setOut(e.target.value)} aria-invalid={o === null} size={8} />
          </td>
        </>
      ) : (
        <>
          <td>{money(offer.input_per_mtok, currency)}</td>
          <td>{money(offer.output_per_mtok, currency)}</td>
        </>
      )}
      <td className="hide-sm">{offer.max_output_tokens.toLocaleString()}</td>
      <td className="hide-sm">
        <span className={`badge ${offer.price_source === "contract" ? "badge-ok" : ""}`}>{offer.price_source}</span>
      </td>
      <td className="small">
        {limitsText(offer.limits)}
        {offer.contract && <div className="muted">contract {contractText(offer.contract, currency)}</div>}
        {offer.slots != null && <div className="muted">{offer.slots} slots, queue up to {offer.queue?.max_wait_seconds ?? 30} s</div>}
      </td>
      {editable && (
        <td className="actions">
          {editing ? (
            <>
              <button
                type="button"
                className="btn btn-small btn-primary"
                disabled={i === null || o === null || save.isPending}
                onClick={async () => {
                  try {
                    await save.mutateAsync({
                      provider: offer.provider_id,
                      model: offer.id,
                      body: modelBody(offer, { price: { input_per_mtok: i!, output_per_mtok: o!, cached_input_per_mtok: offer.cached_input_per_mtok } }),
                    });
                    toast("ok", `Price of ${offer.id} saved`);
                    setEditing(false);
                  } catch (e) {
                    toast("error", `Not saved: ${errorText(e)}`);
                  }
                }}
              >
                Save
              </button>
              <button type="button" className="btn btn-small" onClick={() => setEditing(false)}>
                Cancel
              </button>
            </>
          ) : (
            <>
              <button type="button" className="btn btn-small" onClick={() => setEditing(true)} aria-label={`Edit price of ${offer.id}`}>
                Edit price
              </button>
              <button type="button" className="btn btn-small" onClick={() => setEditingLimits(true)} aria-label={`Edit limits of ${offer.id}`} aria-expanded={editingLimits}>
                Limits
              </button>
            </>
          )}
        </td>
      )}
    </tr>
    {editingLimits && (
      <tr>
        <td colSpan={7}>
          <ModelLimitsEditor offer={offer} providerType={providerType} currency={currency} onDone={() => setEditingLimits(false)} />
        </td>
      </tr>
    )}
    </Fragment>
  );
}
