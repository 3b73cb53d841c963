import { KeyRound, Plus, ShieldAlert } from "lucide-react";
import { useState } from "react";
import { useCreateKey, useExplain, useMyKeys, useRevokeKey } from "../api/hooks";
import type { ExplainOut, KeyCreated, KeyOut, MembershipOut } from "../api/types";
import { CapBar } from "../components/CapBar";
import { CopyButton } from "../components/CopyButton";
import { KindIcon } from "../components/KindIcon";
import { Empty, errorText, QueryState } from "../components/Status";
import { useToast } from "../components/Toasts";
import { amount, dateTime } from "../lib/format";
import { useSession } from "../session";
import { useCapabilities } from "../api/capabilities";
import { MyUsage } from "./MyUsage";

/** A member's own page: keys per unit (create, copy once, revoke), GPT4All set-up, budget left. */
export function KeysPage() {
  const { me } = useSession();
  const mine = useMyKeys();
  const units = me.memberships.filter((m) => !m.archived);
  const caps = useCapabilities();
  const hasMine = !!caps.data?.has("GET", /^\/api\/v1\/me\/usage$/);
  return (
    <section className="page" aria-labelledby="keys-title">
      <div className="page-head">
        <div>
          <h1 id="keys-title">My API keys</h1>
          <p className="muted">
            Keys for the OpenAI-compatible endpoint <code>{me.api_base_url}</code>. Each key belongs to one of your courses or groups and spends its budget.
          </p>
        </div>
      </div>
      {units.length === 0 && <Empty>You are not a member of any course or group, so you cannot create keys.</Empty>}
      <QueryState query={mine} label="Loading your keys…">
        {(list) => (
          <div className="stack-lg">
            {units.map((m) => (
              <UnitKeys key={m.unit_id} membership={m} keys={list.filter((k) => k.unit_id === m.unit_id)} />
            ))}
            {hasMine && units.length > 0 && <MyUsage />}
          </div>
        )}
      </QueryState>
    </section>
  );
}

function UnitKeys({ membership, keys }: { membership: MembershipOut; keys: KeyOut[] }) {
  const { me } = useSession();
  const create = useCreateKey();
  const revoke = useRevokeKey();
  const toast = useToast();
  const [name, setName] = useState("");
  const [created, setCreated] = useState<KeyCreated | null>(null);
  const title = membership.unit_name ?? membership.unit_id;

  return (
    <section className="card" aria-labelledby={`u-${membership.unit_id}`} data-testid={`keys-${membership.unit_id}`}>
      <div className="card-head">
        <h2 id={`u-${membership.unit_id}`} className="with-icon">
          <KindIcon kind={membership.kind} size={20} /> {title}
        </h2>
        <span className="badge">{membership.role}</span>
      </div>
      <p className="muted small">Models: {membership.effective_models.join(", ") || "none"}</p>
      <div className="grid-2">
        <div className="stack">
          <form
            className="row-wrap"
            aria-label={`Create a key for ${title}`}
            onSubmit={async (e) => {
              e.preventDefault();
              try {
                const out = await create.mutateAsync({ unit_id: membership.unit_id, name: name.trim() || null });
                setCreated(out);
                setName("");
                toast("ok", "Key created: copy it now");
              } catch (err) {
                toast("error", `No key: ${errorText(err)}`);
              }
            }}
          >
            <label className="field grow">
              <span>Key name (optional)</span>
              <input value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. laptop GPT4All" maxLength={200} />
            </label>
            <button type="submit" className="btn btn-primary" disabled={create.isPending}>
              <Plus size={16} aria-hidden="true" /> {create.isPending ? "Creating…" : "Create key"}
            </button>
          </form>
          {created && <NewKey created={created} onClose={() => setCreated(null)} />}
          {keys.length === 0 ? (
            <p className="muted">No keys yet for this unit.</p>
          ) : (
            <ul className="key-list" aria-label={`Your keys for ${title}`}>
              {keys.map((k) => (
                <li key={k.id} className={`key-item ${k.revoked_at ? "revoked" : ""}`}>
                  <KeyRound size={16} aria-hidden="true" />
                  <div className="grow">
                    <code>{k.prefix}…</code> {k.name && <strong>{k.name}</strong>}
                    <div className="muted small">
                      created {dateTime(k.created_at, me.timezone)}
                      {k.revoked_at && ` · revoked ${dateTime(k.revoked_at, me.timezone)}`}
                    </div>
                  </div>
                  {k.revoked_at ? (
                    <span className="badge badge-muted">revoked</span>
                  ) : (
                    <button
                      type="button"
                      className="btn btn-small btn-danger"
                      aria-label={`Revoke key ${k.prefix}${k.name ? ` (${k.name})` : ""}`}
                      onClick={() => {
                        if (window.confirm("Revoke this key? Programs using it stop working within seconds."))
                          revoke.mutate(k.id, { onError: (e) => toast("error", errorText(e)), onSuccess: () => toast("ok", "Key revoked") });
                      }}
                    >
                      Revoke
                    </button>
                  )}
                </li>
              ))}
            </ul>
          )}
        </div>
        <Remaining unitId={membership.unit_id} />
      </div>
    </section>
  );
}

function NewKey({ created, onClose }: { created: KeyCreated; onClose: () => void }) {
  return (
    <div className="new-key" role="region" aria-label="Your new key">
      <p className="new-key-warn">
        <ShieldAlert size={16} aria-hidden="true" /> Copy this key now: it is shown only once.
      </p>
      <div className="secret">
        <code data-testid="new-key">{created.key}</code>
        <CopyButton value={created.key} label="Copy key" />
      </div>
      <h3>Set up GPT4All</h3>
      <ol className="steps">
        {created.gpt4all.steps.map((step, i) => (
          <li key={i}>{step}</li>
        ))}
      </ol>
      <dl className="facts">
        <dt>API base URL</dt>
        <dd>
          <code>{created.gpt4all.api_base_url}</code> <CopyButton value={created.gpt4all.api_base_url} label="Copy URL" />
        </dd>
        <dt>Model name</dt>
        <dd>
          <code>{created.gpt4all.model_name ?? "—"}</code>
        </dd>
      </dl>
      <button type="button" className="btn btn-small" onClick={onClose}>
        I have copied it
      </button>
    </div>
  );
}

/** The budget left at every level of the member's path (their own cap first, the institution last). */
export function Remaining({ unitId }: { unitId: string }) {
  const explain = useExplain(unitId);
  return (
    <div className="remaining">
      <h3>Budget left</h3>
      <QueryState query={explain} label="Loading your budget…">
        {(e) => <PathBudget explain={e} />}
      </QueryState>
    </div>
  );
}

export function PathBudget({ explain }: { explain: ExplainOut }) {
  const { me } = useSession();
  const avail = explain.available.cost;
  return (
    <div className="stack" data-testid="path-budget">
      <p className="big-number">
        {avail === null || avail === undefined ? "No limit" : amount("cost", avail, me.currency)}
        <span className="muted small"> available for your next request</span>
      </p>
      <ol className="path-list">
        {explain.nodes.map((n) => {
          const c = n.metrics.cost;
          const own = n.node.startsWith("member");
          return (
            <li key={n.node}>
              <div className="path-node">
                <KindIcon kind={own ? "person" : n.kind} />
                <span>{own ? "Your own limit" : n.name}</span>
                {n.resets_at && <span className="muted small">resets {dateTime(n.resets_at, me.timezone)}</span>}
              </div>
              {c && (
                <CapBar
                  metric="cost"
                  used={c.used}
                  reserved={c.reserved}
                  cap={c.cap}
                  currency={me.currency}
                  label={`${own ? "Your own limit" : n.name}: cost`}
                  compact
                />
              )}
            </li>
          );
        })}
      </ol>
    </div>
  );
}
