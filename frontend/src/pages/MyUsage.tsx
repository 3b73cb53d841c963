import { useMyUsage } from "../api/hooks";
import { QueryState } from "../components/Status";
import { money, tokens } from "../lib/format";
import { keyOf } from "../lib/series";
import { useSession } from "../session";

/** The caller's own requests, tokens and cost this month per unit and model (polled). */
export function MyUsage() {
  const { me } = useSession();
  const mine = useMyUsage();
  return (
    <section className="card" aria-labelledby="my-usage-title" data-testid="my-usage">
      <h2 id="my-usage-title">Your usage this month</h2>
      <QueryState query={mine} label="Loading your usage…">
        {(r) =>
          r.rows.length === 0 ? (
            <p className="muted">No requests yet this month.</p>
          ) : (
            <div className="table-wrap">
            <table className="table">
              <thead>
                <tr>
                  <th scope="col">Unit</th>
                  <th scope="col">Model</th>
                  <th scope="col">Requests</th>
                  <th scope="col">Tokens</th>
                  <th scope="col">Cost</th>
                </tr>
              </thead>
              <tbody>
                {r.rows.map((x) => (
                  <tr key={`${keyOf(x, "unit")}-${keyOf(x, "model")}`}>
                    <th scope="row">{me.memberships.find((m) => m.unit_id === x.keys.unit)?.unit_name ?? x.keys.unit}</th>
                    <td>{x.keys.model}</td>
                    <td data-testid="my-requests">{x.requests.toLocaleString()}</td>
                    <td>{tokens(x.input_tokens + x.output_tokens)}</td>
                    <td>{money(x.cost_micro, me.currency)}</td>
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
