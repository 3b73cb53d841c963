import { Trash2, Upload, UserPlus } from "lucide-react";
import { useState } from "react";
import { useAdmins, useGrant, useImportRoster, useMembers, usePeople, usePutMember, useRemoveMember, useRevokeUnitKey, useUnitKeys } from "../api/hooks";
import type { ImportOut, PersonOut, PersonSource, UnitOut } from "../api/types";
import { errorText, QueryState } from "../components/Status";
import { useToast } from "../components/Toasts";
import { dateTime } from "../lib/format";
import { useSession } from "../session";

const MEMBER_ROLES = ["student", "ta", "instructor", "researcher"];
const SCOPE_ROLES = ["admin", "finance", "auditor"];

/** Roster (with CSV import), admin roles and the members' API keys of one unit. */
export function PeoplePanel({ unit, path }: { unit: UnitOut; path: string[] }) {
  const s = useSession();
  const scope = (roles: string[]) => s.me.scopes.some((x) => roles.includes(x.role) && path.includes(x.unit_id));
  const member = (roles: string[]) => s.me.memberships.some((m) => roles.includes(m.role) && path.includes(m.unit_id));
  const isAdmin = scope(["admin"]);
  const canRoster = isAdmin || member(["instructor"]);
  const canSeeAdmins = scope(["admin", "auditor"]);
  const canReadRoster = scope(["admin", "auditor"]) || member(["instructor", "ta"]);
  const canKeys = scope(["admin", "auditor"]) || member(["instructor"]);
  const canManageKeys = isAdmin || member(["instructor"]);
  const canGrant =
    path.slice(0, -1).some((id) => s.me.scopes.some((x) => x.role === "admin" && x.unit_id === id)) || (s.isInstitutionAdmin && unit.parent_id === null);
  return (
    <div className="stack-lg">
      <Roster unit={unit} canEdit={canRoster && !unit.archived} instructorOnly={!isAdmin} />
      {canReadRoster && <Provenance unitId={unit.id} />}
      {canSeeAdmins && <Admins unitId={unit.id} canEdit={canGrant} />}
      {canKeys && <UnitKeys unitId={unit.id} canManage={canManageKeys} />}
    </div>
  );
}

function Roster({ unit, canEdit, instructorOnly }: { unit: UnitOut; canEdit: boolean; instructorOnly: boolean }) {
  const members = useMembers(unit.id);
  const put = usePutMember(unit.id);
  const remove = useRemoveMember(unit.id);
  const toast = useToast();
  const [filter, setFilter] = useState("");
  const [adding, setAdding] = useState({ user_id: "", role: "student", email: "", name: "" });
  const roles = instructorOnly ? ["student", "ta"] : MEMBER_ROLES;

  return (
    <section className="card" aria-labelledby="roster-title">
      <div className="card-head">
        <h2 id="roster-title">Roster</h2>
        <label className="search search-small">
          <span className="sr-only">Filter members</span>
          <input type="search" placeholder="Filter members" value={filter} onChange={(e) => setFilter(e.target.value)} />
        </label>
      </div>
      <QueryState query={members} label="Loading roster…">
        {(list) => {
          const q = filter.trim().toLowerCase();
          const shown = q ? list.filter((m) => [m.user_id, m.name ?? "", m.email ?? ""].some((v) => v.toLowerCase().includes(q))) : list;
          return shown.length === 0 ? (
            <p className="muted">{list.length ? "No member matches." : "No members yet."}</p>
          ) : (
            <div className="table-wrap">
              <table className="table">
                <thead>
                  <tr>
                    <th scope="col">Member</th>
                    <th scope="col">Role</th>
                    <th scope="col" className="hide-sm">
                      Source
                    </th>
                    {canEdit && <th scope="col"><span className="sr-only">Actions</span></th>}
                  </tr>
                </thead>
                <tbody>
                  {shown.slice(0, 500).map((m) => (
                    <tr key={m.user_id}>
                      <th scope="row">
                        {m.name ?? m.user_id}
                        <div className="muted small">
                          {m.user_id}
                          {m.email && ` · ${m.email}`}
                        </div>
                      </th>
                      <td>
                        {canEdit && roles.includes(m.role) ? (
                          <select
                            aria-label={`Role of ${m.user_id}`}
                            value={m.role}
                            onChange={(e) =>
                              put.mutate(
                                { user_id: m.user_id, role: e.target.value },
                                { onError: (err) => toast("error", errorText(err)), onSuccess: () => toast("ok", `${m.user_id} is now ${e.target.value}`) },
                              )
                            }
                          >
                            {roles.map((r) => (
                              <option key={r}>{r}</option>
                            ))}
                          </select>
                        ) : (
                          <span className="badge">{m.role}</span>
                        )}
                      </td>
                      <td className="hide-sm muted">{m.source}</td>
                      {canEdit && (
                        <td className="actions">
                          {roles.includes(m.role) && (
                            <button
                              type="button"
                              className="btn btn-small btn-danger"
                              aria-label={`Remove ${m.user_id}`}
                              onClick={() => {
                                if (window.confirm(`Remove ${m.user_id} from ${unit.name ?? unit.id}? Their keys for this unit stop working.`))
                                  remove.mutate(m.user_id, { onError: (err) => toast("error", errorText(err)), onSuccess: () => toast("ok", `${m.user_id} removed`) });
                              }}
                            >
                              <Trash2 size={14} aria-hidden="true" />
                            </button>
                          )}
                        </td>
                      )}
                    </tr>
                  ))}
                </tbody>
              </table>
              {shown.length > 500 && <p className="muted small">Showing 500 of {shown.length}; filter to find others.</p>}
            </div>
          );
        }}
      </QueryState>
      {canEdit && (
        <>
          <form
            className="subform"
            aria-label="Add a member"
            onSubmit={(e) => {
              e.preventDefault();
              const profile = adding.email || adding.name ? { email: adding.email || undefined, name: adding.name || undefined } : null;
              put.mutate(
                { user_id: adding.user_id.trim(), role: adding.role, profile },
                {
                  onError: (err) => toast("error", errorText(err)),
                  onSuccess: () => {
                    toast("ok", `${adding.user_id} added as ${adding.role}`);
                    setAdding({ user_id: "", role: adding.role, email: "", name: "" });
                  },
                },
              );
            }}
          >
            <h3>
              <UserPlus size={16} aria-hidden="true" /> Add a member
            </h3>
            <div className="row-wrap">
              <label className="field">
                <span>User id</span>
                <input required value={adding.user_id} onChange={(e) => setAdding({ ...adding, user_id: e.target.value })} />
              </label>
              <label className="field">
                <span>Role</span>
                <select value={adding.role} onChange={(e) => setAdding({ ...adding, role: e.target.value })}>
                  {roles.map((r) => (
                    <option key={r}>{r}</option>
                  ))}
                </select>
              </label>
              <label className="field">
                <span>Email (new users)</span>
                <input type="email" value={adding.email} onChange={(e) => setAdding({ ...adding, email: e.target.value })} />
              </label>
              <label className="field">
                <span>Name (new users)</span>
                <input value={adding.name} onChange={(e) => setAdding({ ...adding, name: e.target.value })} />
              </label>
            </div>
            <button type="submit" className="btn" disabled={put.isPending}>
              Add member
            </button>
          </form>
          <CsvImport unitId={unit.id} />
        </>
      )}
    </section>
  );
}

function CsvImport({ unitId }: { unitId: string }) {
  const [csv, setCsv] = useState("");
  const [replace, setReplace] = useState(false);
  const [result, setResult] = useState<ImportOut | null>(null);
  const run = useImportRoster(unitId);
  const toast = useToast();
  return (
    <form
      className="subform"
      aria-label="Import a roster from CSV"
      onSubmit={(e) => {
        e.preventDefault();
        run.mutate(
          { csv, replace },
          {
            onSuccess: (out) => {
              setResult(out);
              toast("ok", `Roster imported: ${out.added.length} added, ${out.changed.length} changed, ${out.removed.length} removed`);
            },
            onError: (err) => toast("error", `Import refused: ${errorText(err)}`),
          },
        );
      }}
    >
      <h3>
        <Upload size={16} aria-hidden="true" /> Import a roster (CSV)
      </h3>
      <p className="muted small">
        Columns: <code>user, role, email, name, sso_subject</code>. Pick a file or paste the text.
      </p>
      <label className="field">
        <span>CSV file</span>
        <input type="file" accept=".csv,text/csv,text/plain" onChange={async (e) => setCsv((await e.target.files?.[0]?.text()) ?? "")} />
      </label>
      <label className="field">
        <span>CSV text</span>
        <textarea rows={4} value={csv} onChange={(e) => setCsv(e.target.value)} placeholder={"user,role,email,name\nana,student,ana@example.edu,Ana Lima"} />
      </label>
      <label className="check">
        <input type="checkbox" checked={replace} onChange={(e) => setReplace(e.target.checked)} /> Replace: also remove members the file does not list
      </label>
      <button type="submit" className="btn" disabled={!csv.trim() || run.isPending}>
        {run.isPending ? "Importing…" : "Import"}
      </button>
      {result && (
        <p className="small" role="status">
          Added {result.added.length}, changed {result.changed.length}, unchanged {result.unchanged.length}, removed {result.removed.length}, new users{" "}
          {result.users_created.length}.
        </p>
      )}
    </form>
  );
}

function Admins({ unitId, canEdit }: { unitId: string; canEdit: boolean }) {
  const admins = useAdmins(unitId);
  const grant = useGrant(unitId);
  const toast = useToast();
  const [form, setForm] = useState({ user_id: "", role: "admin" });
  return (
    <section className="card" aria-labelledby="admins-title">
      <h2 id="admins-title">Admins, finance and auditors</h2>
      <QueryState query={admins}>
        {(list) =>
          list.length === 0 ? (
            <p className="muted">Nobody holds a role on this unit itself (roles above it still apply).</p>
          ) : (
            <ul className="plain-list">
              {list.map((a) => (
                <li key={`${a.role}-${a.user_id}`} className="list-row">
                  <span>
                    <span className="badge">{a.role}</span> {a.name ?? a.user_id} <span className="muted small">{a.email}</span>
                  </span>
                  {canEdit && (
                    <button
                      type="button"
                      className="btn btn-small btn-danger"
                      onClick={() =>
                        grant.mutate(
                          { role: a.role, user_id: a.user_id, revoke: true },
                          { onError: (e) => toast("error", errorText(e)), onSuccess: () => toast("ok", `${a.user_id} is no longer ${a.role}`) },
                        )
                      }
                    >
                      Revoke
                    </button>
                  )}
                </li>
              ))}
            </ul>
          )
        }
      </QueryState>
      {canEdit && (
        <form
          className="subform row-wrap"
          aria-label="Grant a role"
          onSubmit={(e) => {
            e.preventDefault();
            grant.mutate(
              { role: form.role, user_id: form.user_id.trim() },
              { onError: (err) => toast("error", errorText(err)), onSuccess: () => toast("ok", `${form.user_id} is now ${form.role}`) },
            );
          }}
        >
          <label className="field">
            <span>User id</span>
            <input required value={form.user_id} onChange={(e) => setForm({ ...form, user_id: e.target.value })} />
          </label>
          <label className="field">
            <span>Role</span>
            <select value={form.role} onChange={(e) => setForm({ ...form, role: e.target.value })}>
              {SCOPE_ROLES.map((r) => (
                <option key={r}>{r}</option>
              ))}
            </select>
          </label>
          <button type="submit" className="btn" disabled={grant.isPending}>
            Grant
          </button>
        </form>
      )}
    </section>
  );
}

function UnitKeys({ unitId, canManage }: { unitId: string; canManage: boolean }) {
  const keysQ = useUnitKeys(unitId);
  const revoke = useRevokeUnitKey(unitId);
  const toast = useToast();
  const { me } = useSession();
  return (
    <section className="card" aria-labelledby="unit-keys-title">
      <h2 id="unit-keys-title">Members&apos; API keys</h2>
      <QueryState query={keysQ}>
        {(list) =>
          list.length === 0 ? (
            <p className="muted">No keys.</p>
          ) : (
            <div className="table-wrap">
              <table className="table">
                <thead>
                  <tr>
                    <th scope="col">Key</th>
                    <th scope="col">Member</th>
                    <th scope="col" className="hide-sm">
                      Created
                    </th>
                    <th scope="col">Status</th>
                    {canManage && <th scope="col"><span className="sr-only">Actions</span></th>}
                  </tr>
                </thead>
                <tbody>
                  {list.map((k) => (
                    <tr key={k.id}>
                      <th scope="row">
                        <code>{k.prefix}…</code> {k.name && <span className="muted small">{k.name}</span>}
                      </th>
                      <td>{k.user_id}</td>
                      <td className="hide-sm">{dateTime(k.created_at, me.timezone)}</td>
                      <td>{k.revoked_at ? <span className="badge badge-muted">revoked</span> : <span className="badge badge-ok">active</span>}</td>
                      {canManage && (
                        <td className="actions">
                          {!k.revoked_at && (
                            <button
                              type="button"
                              className="btn btn-small btn-danger"
                              onClick={() => revoke.mutate(k.id, { onError: (e) => toast("error", errorText(e)), onSuccess: () => toast("ok", "Key revoked") })}
                            >
                              Revoke
                            </button>
                          )}
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
    </section>
  );
}

const SOURCE_LABELS: Record<string, string> = { file: "file", sso: "SSO", scim: "SCIM", roster: "roster", api: "API" };

/** How the dashboard names a person's source; people created before it was recorded have none. */
export function sourceLabel(source: PersonSource): string {
  if (source === null) return "unknown (before provenance was recorded)";
  return SOURCE_LABELS[source] ?? source;
}

function SourceBadge({ source }: { source: PersonSource }) {
  return (
    <span className={`badge ${source === null ? "badge-muted" : ""}`} data-testid="person-source">
      {sourceLabel(source)}
    </span>
  );
}

/** Where each person came from, their memberships with dates, and when they last used them. */
function Provenance({ unitId }: { unitId: string }) {
  const { me } = useSession();
  const [pages, setPages] = useState<(string | null)[]>([null]);
  const after = pages[pages.length - 1];
  const people = usePeople(unitId, after);
  return (
    <section className="card" aria-labelledby="provenance-title">
      <h2 id="provenance-title">People: where they came from</h2>
      <p className="muted small">
        Source is the path that created the person (the institution file, a first SSO sign-in, SCIM, a OneRoster roster or the admin API); a later import or sign-in does
        not change it. Last use is the latest request admitted with their keys.
      </p>
      <QueryState query={people} label="Loading people…">
        {(page) =>
          page.people.length === 0 ? (
            <p className="muted">No members yet.</p>
          ) : (
            <div className="table-wrap">
              <table className="table" aria-label="People and their provenance">
                <thead>
                  <tr>
                    <th scope="col">Person</th>
                    <th scope="col">Source</th>
                    <th scope="col">Memberships</th>
                    <th scope="col">Last use</th>
                  </tr>
                </thead>
                <tbody>
                  {page.people.map((p) => (
                    <PersonRow key={p.user_id} person={p} timeZone={me.timezone} />
                  ))}
                </tbody>
              </table>
            </div>
          )
        }
      </QueryState>
      <div className="form-actions">
        {pages.length > 1 && (
          <button type="button" className="btn btn-small" onClick={() => setPages(pages.slice(0, -1))}>
            Previous people
          </button>
        )}
        {people.data?.next_after && (
          <button type="button" className="btn btn-small" onClick={() => setPages([...pages, people.data!.next_after])}>
            More people
          </button>
        )}
      </div>
    </section>
  );
}

function PersonRow({ person: p, timeZone }: { person: PersonOut; timeZone: string }) {
  return (
    <tr data-testid={`person-${p.user_id}`}>
      <th scope="row">
        {p.name ?? p.user_id}
        <div className="muted small">
          {p.user_id}
          {p.email && ` · ${p.email}`}
        </div>
        {p.deprovisioned_at && <span className="badge badge-muted">left {dateTime(p.deprovisioned_at, timeZone)}</span>}
        {p.erased && <span className="badge badge-muted">erased</span>}
      </th>
      <td>
        <SourceBadge source={p.source} />
        {p.external_id && <div className="muted small">id there: {p.external_id}</div>}
      </td>
      <td>
        <ul className="plain-list">
          {p.memberships.map((m) => (
            <li key={m.unit_id} className="small">
              {m.unit_name ?? m.unit_id} <span className="badge">{m.role}</span> <span className="muted">via {m.source}</span>{" "}
              {m.ended ? (
                <span className="badge badge-muted">ended {dateTime(m.ends_at, timeZone)}</span>
              ) : m.ends_at ? (
                <span className="muted">until {dateTime(m.ends_at, timeZone)}</span>
              ) : null}
            </li>
          ))}
        </ul>
      </td>
      <td>{p.last_used_at ? dateTime(p.last_used_at, timeZone) : <span className="muted">never</span>}</td>
    </tr>
  );
}
