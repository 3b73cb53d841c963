import { UserX } from "lucide-react";
import { useState } from "react";
import { useLeavers } from "../api/hooks";
import type { LeaverOut } from "../api/types";
import { Empty, QueryState } from "../components/Status";
import { dateTime, money } from "../lib/format";
import { useSession } from "../session";

const READERS = ["admin", "finance", "auditor"];

/**
 * Keys that still worked after their membership ended (or their person left), for a unit the caller
 * administers, audits or pays for, and everything below it. The gateway refuses such keys, so the right
 * answer is an empty list; a row is a key the institution should look into (and money it paid).
 */
export function LeaversPage() {
  const { me } = useSession();
  const units = [...new Map(me.scopes.filter((s) => READERS.includes(s.role)).map((s) => [s.unit_id, s.unit_name ?? s.unit_id])).entries()];
  const [unitId, setUnitId] = useState(units[0]?.[0] ?? "");
  const leavers = useLeavers(unitId);
  return (
    <section className="page" aria-labelledby="leavers-title">
      <div className="page-head">
        <div>
          <h1 id="leavers-title">Leavers</h1>
          <p className="muted">Keys used after their membership ended or their person was deprovisioned. This list should be empty.</p>
        </div>
        {units.length > 1 && (
          <label className="field">
            <span>Unit (and below)</span>
            <select value={unitId} onChange={(e) => setUnitId(e.target.value)}>
              {units.map(([id, name]) => (
                <option key={id} value={id}>
                  {name}
                </option>
              ))}
            </select>
          </label>
        )}
      </div>
      {!unitId ? (
        <Empty>You hold no admin, finance or auditor role, so there is no unit to check.</Empty>
      ) : (
        <QueryState query={leavers} label="Checking the ledger…">
          {(out) => (
            <div className="card">
              <p className="muted small">
                {out.grace_seconds > 0
                  ? `A key may be used for ${seconds(out.grace_seconds)} after its membership ends (the operator's grace); requests`
                  : "A key stops working when its membership ends; requests"}{" "}
                within {seconds(out.tolerance_seconds)} after that are the gateways&apos; key caches catching up and are not listed.
              </p>
              {out.leavers.length === 0 ? (
                <Empty>
                  <UserX size={18} aria-hidden="true" /> No key worked after its membership ended.
                </Empty>
              ) : (
                <LeaversTable rows={out.leavers} currency={me.currency} timeZone={me.timezone} truncated={out.truncated} />
              )}
            </div>
          )}
        </QueryState>
      )}
    </section>
  );
}

function seconds(n: number): string {
  if (n >= 86400 && n % 86400 === 0) return `${n / 86400} day${n === 86400 ? "" : "s"}`;
  if (n >= 3600 && n % 3600 === 0) return `${n / 3600} hour${n === 3600 ? "" : "s"}`;
  return `${n} s`;
}

function stoppedByLeaving(r: LeaverOut): boolean {
  return r.deprovisioned_at !== null && new Date(r.deprovisioned_at).getTime() === new Date(r.stopped_at).getTime();
}

function LeaversTable({ rows, currency, timeZone, truncated }: { rows: LeaverOut[]; currency: string; timeZone: string; truncated: boolean }) {
  return (
    <div className="table-wrap">
      <table className="table" aria-label="Keys used after their membership ended">
        <thead>
          <tr>
            <th scope="col">Key</th>
            <th scope="col">Person</th>
            <th scope="col">Unit</th>
            <th scope="col">Should have stopped</th>
            <th scope="col">Used after</th>
            <th scope="col">Requests</th>
            <th scope="col">Cost</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.key_id} data-testid={`leaver-${r.key_id}`}>
              <th scope="row">
                <code>{r.key_prefix}…</code>
                {r.key_revoked_at && <span className="badge badge-muted">revoked</span>}
              </th>
              <td>
                {r.name ?? r.user_id}
                <div className="muted small">{r.user_id}</div>
              </td>
              <td>{r.unit_name ?? r.unit_id}</td>
              <td>
                {dateTime(r.stopped_at, timeZone)}
                <div className="muted small">{stoppedByLeaving(r) ? "person deprovisioned" : `membership ended ${dateTime(r.ends_at, timeZone)}`}</div>
              </td>
              <td>
                {dateTime(r.first_event_at, timeZone)}
                {r.last_event_at !== r.first_event_at && <div className="muted small">to {dateTime(r.last_event_at, timeZone)}</div>}
              </td>
              <td>{r.events}</td>
              <td>{money(r.cost_micro, currency)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {truncated && <p className="muted small">Showing the {rows.length} most recent; there are more.</p>}
    </div>
  );
}
