import { AlertTriangle, ChevronRight } from "lucide-react";
import { Link, useParams } from "react-router";
import { useTree, useUnit } from "../api/hooks";
import type { UnitOut } from "../api/types";
import { CapBar } from "../components/CapBar";
import { KindIcon } from "../components/KindIcon";
import { QueryState } from "../components/Status";
import { Tabs } from "../components/Tabs";
import { amount, dateOnly, dateTime, periodLabel } from "../lib/format";
import { indexTree, label, pathTo } from "../lib/tree";
import { useSession, type Session } from "../session";
import { BudgetEditor } from "./BudgetEditor";
import { ExtrasPanel } from "./ExtrasPanel";
import { LimitsCard } from "./LimitsCard";
import { PeoplePanel } from "./PeoplePanel";
import { PolicyPanel } from "./PolicyPanel";

function scopeOver(s: Session, path: string[], roles: string[]): boolean {
  return s.me.scopes.some((x) => roles.includes(x.role) && path.includes(x.unit_id));
}

export function UnitPage() {
  const { unitId = "", tab = "overview" } = useParams();
  const unit = useUnit(unitId);
  return (
    <section className="page" aria-labelledby="unit-title">
      <QueryState query={unit} label="Loading unit…">
        {(u) => <UnitView unit={u} tab={tab} />}
      </QueryState>
    </section>
  );
}

function UnitView({ unit, tab }: { unit: UnitOut; tab: string }) {
  const s = useSession();
  const tree = useTree();
  const index = tree.data ? indexTree(tree.data.roots) : null;
  const path = index ? pathTo(index, unit.id) : [unit.id];
  // Rules of a unit are set from above: an admin of a unit strictly above it (spec: never your own cap).
  const above = path.slice(0, -1);
  const canEditRules = scopeOver(s, above, ["admin"]) || (s.isInstitutionAdmin && unit.parent_id === null);
  const canPeople = scopeOver(s, path, ["admin", "auditor"]) || s.me.memberships.some((m) => path.includes(m.unit_id) && ["instructor", "ta"].includes(m.role));
  const base = `/units/${encodeURIComponent(unit.id)}`;
  const tabs = [
    { id: "overview", label: "Overview", to: base },
    { id: "allocation", label: "Allocation", to: `${base}/allocation` },
    ...(canPeople ? [{ id: "people", label: "People & keys", to: `${base}/people` }] : []),
    { id: "models", label: "Models", to: `${base}/models` },
  ];
  const current = tabs.some((t) => t.id === tab) ? tab : "overview";

  return (
    <>
      <nav aria-label="Breadcrumb" className="breadcrumb">
        <ol>
          <li>
            <Link to="/units">Units</Link>
          </li>
          {path.slice(0, -1).map((id) => (
            <li key={id}>
              <ChevronRight size={14} aria-hidden="true" />
              <Link to={`/units/${encodeURIComponent(id)}`}>{index?.get(id) ? label(index.get(id)!) : id}</Link>
            </li>
          ))}
        </ol>
      </nav>
      <div className="page-head unit-head">
        <KindIcon kind={unit.kind} size={28} />
        <div>
          <h1 id="unit-title">{label(unit)}</h1>
          <p className="muted">
            <code>{unit.id}</code> · {unit.kind} · {periodLabel(unit.numbers.period)} budget
            {unit.numbers.resets_at && <> · resets {dateTime(unit.numbers.resets_at, s.me.timezone)}</>}
            {unit.archived && <span className="badge badge-muted">archived</span>}
          </p>
        </div>
      </div>
      <Tabs tabs={tabs} current={current} label="Unit sections" />
      <div id="tabpanel" role="tabpanel" aria-labelledby={`tab-${current}`} className="tabpanel">
        {current === "overview" && <Overview unit={unit} />}
        {current === "allocation" && (
          <div className="stack-lg">
            <BudgetEditor unit={unit} canEdit={canEditRules} />
            <ExtrasPanel unit={unit} canEdit={canEditRules} />
            <LimitsCard unit={unit} canEdit={canEditRules} />
          </div>
        )}
        {current === "people" && <PeoplePanel unit={unit} path={path} />}
        {current === "models" && <PolicyPanel unit={unit} canEdit={canEditRules} />}
      </div>
    </>
  );
}

function Overview({ unit }: { unit: UnitOut }) {
  const { me } = useSession();
  const m = unit.numbers.metrics;
  return (
    <div className="grid-2">
      <div className="card">
        <h2>This period</h2>
        <p className="muted small">Period {unit.numbers.period_key}</p>
        <div className="stack">
          <div>
            <h3 className="metric-title">Cost</h3>
            <CapBar metric="cost" used={m.cost.used} reserved={m.cost.reserved} cap={m.cost.cap} currency={me.currency} label="Cost" />
          </div>
          <div>
            <h3 className="metric-title">Tokens</h3>
            <CapBar metric="tokens" used={m.tokens.used} reserved={m.tokens.reserved} cap={m.tokens.cap} currency={me.currency} label="Tokens" />
          </div>
        </div>
        <dl className="facts">
          <dt>Room left (cost)</dt>
          <dd>{m.cost.room === null ? "no cap of its own" : amount("cost", m.cost.room, me.currency)}</dd>
          <dt>Each member may spend</dt>
          <dd>{m.cost.member_cap === null ? "no member cap" : amount("cost", m.cost.member_cap, me.currency)}</dd>
          <dt>Models</dt>
          <dd>{unit.effective_models.join(", ") || "none"}</dd>
        </dl>
      </div>
      <div className="card">
        <h2>Warnings</h2>
        {unit.warnings.length === 0 ? (
          <p className="muted">No warnings: children fit within this unit&apos;s cap and its cap is above its spend.</p>
        ) : (
          <ul className="warn-list">
            {unit.warnings.map((w) => (
              <li key={`${w.code}-${w.metric}`}>
                <AlertTriangle size={16} aria-hidden="true" />
                <span>
                  <strong>{w.code === "over_allocated" ? "Over-allocated" : "Cap below spend"}</strong> — {w.message}
                </span>
              </li>
            ))}
          </ul>
        )}
        <h2>Extras</h2>
        {unit.numbers.extras.length === 0 ? (
          <p className="muted">No extras (grants or cost-centre funds) on this unit.</p>
        ) : (
          <ul className="plain-list">
            {unit.numbers.extras.map((x) => (
              <li key={`${x.id}-${x.metric}`}>
                <strong>{x.id}</strong> {amount(x.metric, x.amount, me.currency)} · used {amount(x.metric, x.used, me.currency)} · {dateOnly(x.valid_from)} – {dateOnly(x.valid_to)}
                {x.chargeback && <span className="badge">{x.chargeback}</span>}
                {!x.valid_now && <span className="badge badge-muted">not valid today</span>}
              </li>
            ))}
          </ul>
        )}
      </div>
    </div>
  );
}
