import { Filter } from "lucide-react";
import { useState } from "react";
import { useAudit, type AuditFilters } from "../api/hooks";
import type { AuditOut } from "../api/types";
import { Empty, QueryState } from "../components/Status";
import { dateTime } from "../lib/format";
import { useSession } from "../session";

const EMPTY: AuditFilters = {};

/** The audit log (who changed what, before and after), newest first, with the server's filters. */
export function AuditPage() {
  const { me } = useSession();
  const [draft, setDraft] = useState({ unit: "", actor: "", action: "", target: "", since: "", until: "" });
  const [filters, setFilters] = useState<AuditFilters>(EMPTY);
  const [pages, setPages] = useState<(number | undefined)[]>([undefined]);
  const beforeId = pages[pages.length - 1];
  const audit = useAudit({ ...filters, before_id: beforeId });

  const apply = () => {
    const f: AuditFilters = {};
    for (const [k, v] of Object.entries(draft)) {
      if (!v.trim()) continue;
      (f as Record<string, string>)[k] = k === "since" || k === "until" ? new Date(v).toISOString() : v.trim();
    }
    setFilters(f);
    setPages([undefined]);
  };

  return (
    <section className="page" aria-labelledby="audit-title">
      <div className="page-head">
        <div>
          <h1 id="audit-title">Audit log</h1>
          <p className="muted">Every change to units, budgets, rosters, roles, models and keys in your scope.</p>
        </div>
      </div>
      <form
        className="card filters"
        aria-label="Filter the audit log"
        onSubmit={(e) => {
          e.preventDefault();
          apply();
        }}
      >
        <div className="row-wrap">
          <label className="field">
            <span>Unit (and below)</span>
            <input value={draft.unit} onChange={(e) => setDraft({ ...draft, unit: e.target.value })} placeholder="e.g. cs" />
          </label>
          <label className="field">
            <span>Actor</span>
            <input value={draft.actor} onChange={(e) => setDraft({ ...draft, actor: e.target.value })} placeholder="user id" />
          </label>
          <label className="field">
            <span>Action starts with</span>
            <input value={draft.action} onChange={(e) => setDraft({ ...draft, action: e.target.value })} placeholder="budget." list="audit-actions" />
            <datalist id="audit-actions">
              {["budget.", "extra.", "unit.", "member.", "scope.", "models.", "key.", "token.", "org."].map((a) => (
                <option key={a} value={a} />
              ))}
            </datalist>
          </label>
          <label className="field">
            <span>Target starts with</span>
            <input value={draft.target} onChange={(e) => setDraft({ ...draft, target: e.target.value })} placeholder="unit:demo-u/cs101" />
          </label>
          <label className="field">
            <span>Since</span>
            <input type="datetime-local" value={draft.since} onChange={(e) => setDraft({ ...draft, since: e.target.value })} />
          </label>
          <label className="field">
            <span>Until</span>
            <input type="datetime-local" value={draft.until} onChange={(e) => setDraft({ ...draft, until: e.target.value })} />
          </label>
        </div>
        <div className="form-actions">
          <button type="submit" className="btn btn-primary">
            <Filter size={16} aria-hidden="true" /> Apply filters
          </button>
          <button
            type="button"
            className="btn"
            onClick={() => {
              setDraft({ unit: "", actor: "", action: "", target: "", since: "", until: "" });
              setFilters(EMPTY);
              setPages([undefined]);
            }}
          >
            Clear
          </button>
        </div>
      </form>
      <div className="card">
        <QueryState query={audit} label="Loading the audit log…">
          {(page) =>
            page.entries.length === 0 ? (
              <Empty>No entries match.</Empty>
            ) : (
              <>
                <ol className="audit-list" aria-label="Audit entries">
                  {page.entries.map((e) => (
                    <AuditEntry key={e.id} entry={e} tz={me.timezone} />
                  ))}
                </ol>
                <div className="form-actions">
                  <button type="button" className="btn" disabled={pages.length < 2} onClick={() => setPages((p) => p.slice(0, -1))}>
                    Newer
                  </button>
                  <button type="button" className="btn" disabled={page.next_before_id === null} onClick={() => setPages((p) => [...p, page.next_before_id ?? undefined])}>
                    Older
                  </button>
                </div>
              </>
            )
          }
        </QueryState>
      </div>
    </section>
  );
}

function changedFields(before: Record<string, unknown> | null, after: Record<string, unknown> | null): string[] {
  const keys = new Set([...Object.keys(before ?? {}), ...Object.keys(after ?? {})]);
  return [...keys].filter((k) => JSON.stringify(before?.[k]) !== JSON.stringify(after?.[k]));
}

function AuditEntry({ entry, tz }: { entry: AuditOut; tz: string }) {
  const fields = changedFields(entry.before, entry.after);
  return (
    <li className="audit-item">
      <div className="audit-line">
        <span className="badge">{entry.action}</span>
        <code className="audit-target">{entry.target}</code>
        <span className="muted small">
          by <strong>{entry.actor}</strong> · {dateTime(entry.at, tz)}
        </span>
      </div>
      {fields.length > 0 && (
        <details>
          <summary>
            {fields.length} field{fields.length === 1 ? "" : "s"} changed: {fields.slice(0, 4).join(", ")}
            {fields.length > 4 ? "…" : ""}
          </summary>
          <div className="table-wrap">
            <table className="table table-compact">
              <thead>
                <tr>
                  <th scope="col">Field</th>
                  <th scope="col">Before</th>
                  <th scope="col">After</th>
                </tr>
              </thead>
              <tbody>
                {fields.map((f) => (
                  <tr key={f}>
                    <th scope="row">{f}</th>
                    <td>
                      <code>{JSON.stringify(entry.before?.[f] ?? null)}</code>
                    </td>
                    <td>
                      <code>{JSON.stringify(entry.after?.[f] ?? null)}</code>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </details>
      )}
    </li>
  );
}
