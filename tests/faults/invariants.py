"""The three money invariants of issue 16, checked by numbers from the PostgreSQL ledger.

Each checker is a plain function returning a list of violations (strings naming the unit, member, grant or
request and the numbers), so a failing test prints exactly what broke:

* **I1** funded spend <= cap: for every unit, member and grant, the allocation (and grant money) the ledger's
  `funding` records charged to it in one period, against its cap in the institution file.
* **I2** every request the upstream double served is in the ledger, once, with the tokens the double
  reported (compared with the double's own served log).
* **I3** nothing is free: every ledger row's cost is price x tokens, and cost = funded + overage.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg2

Violations = list[str]
MICRO = 1_000_000
# Statuses of a request the upstream answered (fully or in part): each must be billed.
SERVED_STATUSES = frozenset({"ok", "clamped", "client_abort", "unsettled", "upstream_error"})


class SentLike(Protocol):
    marker: str
    request_id: str | None


@dataclass(frozen=True)
class Row:
    request_id: str
    user_id: str | None
    unit_id: str | None
    model_id: str | None
    input_tokens: int
    output_tokens: int
    cost_micro: int
    overage_micro: int
    status: str
    funding: Mapping[str, Any]
    extras_paid: Sequence[Mapping[str, Any]]


def ledger_rows(db_url: str, institution: str) -> list[Row]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "select request_id, user_id, unit_id, model_id, input_tokens, output_tokens, cost_micro,"
            " overage_micro, status, funding, extras_paid from usage_event where institution_id = %s",
            (institution,),
        )
        rows = [Row(*r) for r in cur.fetchall()]
    conn.close()
    return rows


def served_log(path: Path) -> list[dict[str, Any]]:
    """The double's own record: one entry per answer it sent (whole or cut), with the tokens it reported."""
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed double: nothing it could have reported
        # The double logs the prompt's start; the test's marker is its first word.
        entry["marker"] = (entry.get("marker") or "").split(" ", 1)[0]
        out.append(entry)
    return out


# -- caps from the institution file ------------------------------------------------------------------------
def _micro(dollars: Any) -> int:
    return round(float(dollars) * MICRO)


def caps(org: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """({node id: cost cap in µ$}, {grant id: µ$}) as the institution file declares them: fixed caps, percent
    caps of the parent's, member caps as the `member(user,unit)` nodes the ledger's funding names."""
    nodes: dict[str, int] = {}
    grants: dict[str, int] = {}

    def walk(unit: Mapping[str, Any], parent_cap: int | None) -> None:
        cost = (unit.get("budget") or {}).get("cost") or {}
        cap: int | None = None
        if "fixed" in cost:
            cap = _micro(cost["fixed"])
        elif "percent" in cost and parent_cap is not None:
            cap = parent_cap * int(cost["percent"]) // 100
        if cap is not None:
            nodes[unit["id"]] = cap
        member = ((unit.get("member_cap") or {}).get("cost") or {}).get("fixed")
        if member is not None:
            for m in unit.get("members") or ():
                nodes[f"member({m['user']},{unit['id']})"] = _micro(member)
        for extra in unit.get("extras") or ():
            if extra.get("cost") is not None:
                grants[extra["id"]] = _micro(extra["cost"])
        for child in unit.get("children") or ():
            walk(child, cap if cap is not None else parent_cap)

    for root in org["units"]:
        walk(root, None)
    return nodes, grants


# -- I1 --------------------------------------------------------------------------------------------------
def funded_spend(rows: Iterable[Row]) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Money the ledger says each (node, period) and each grant paid, from the funding quota/ applied."""
    per_node: dict[tuple[str, str], int] = defaultdict(int)
    per_grant: dict[str, int] = defaultdict(int)
    for r in rows:
        f = r.funding or {}
        if not f:
            continue
        path, keys = f.get("path") or [], f.get("period_keys") or []
        alloc = int((f.get("allocation") or {}).get("cost", 0))
        for node, key in zip(path, keys, strict=False):
            per_node[(node, key)] += alloc
        for extra_id, j, amount in (f.get("extras") or {}).get("cost", ()):
            per_grant[str(extra_id)] += int(amount)
            for node, key in list(zip(path, keys, strict=False))[: int(j)]:
                per_node[(node, key)] += int(amount)  # a grant at j also fills the rooms of n0..n(j-1)
    return per_node, per_grant


def check_caps(org: Mapping[str, Any], rows: Iterable[Row]) -> Violations:
    node_caps, grant_caps = caps(org)
    per_node, per_grant = funded_spend(rows)
    out = [
        f"I1 {node} period {key}: funded {spent} µ$ > cap {node_caps[node]} µ$"
        for (node, key), spent in sorted(per_node.items())
        if node in node_caps and spent > node_caps[node]
    ]
    out += [
        f"I1 grant {g}: paid {spent} µ$ > {grant_caps[g]} µ$"
        for g, spent in sorted(per_grant.items())
        if g in grant_caps and spent > grant_caps[g]
    ]
    return out


# -- I2 --------------------------------------------------------------------------------------------------
def check_served(
    served: Sequence[Mapping[str, Any]], rows: Sequence[Row], sent: Sequence[SentLike]
) -> Violations:
    """Every answer the double sent is one ledger row. Matched by the gateway's request id (the client kept
    it with the marker it put in the prompt); an answer whose head never reached the client is matched by
    count against rows no client saw. An answer the double completed with usage must be billed at exactly
    those tokens (an `unsettled` row, billed at its hold, at least those); a cut one at least what the
    double wrote."""
    out: Violations = []
    ids = {s.marker: s.request_id for s in sent}
    by_id: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.status in SERVED_STATUSES:
            by_id[r.request_id].append(r)
    for rid, found in sorted(by_id.items()):
        if len(found) > 1:
            out.append(f"I2 request {rid}: {len(found)} ledger rows for one request")
    known = {rid for rid in ids.values() if rid}
    unknown_rows = [r for rid, rs in by_id.items() if rid not in known for r in rs]
    unmatched = 0
    for entry in served:
        rid = ids.get(entry["marker"])
        if rid is None:
            unmatched += 1
            continue
        found = by_id.get(rid)
        if not found:
            out.append(
                f"I2 request {rid} (marker {entry['marker']}): served by the upstream "
                f"(in {entry['prompt_tokens']}, out {entry['completion_tokens']}, complete={entry['complete']}) "
                "but not in the ledger as billed"
            )
            continue
        row = found[0]
        want_in, want_out = int(entry["prompt_tokens"]), int(entry["completion_tokens"])
        if entry["complete"]:
            if row.status == "unsettled":
                ok = row.input_tokens >= want_in and row.output_tokens >= want_out
            else:
                ok = (row.input_tokens, row.output_tokens) == (want_in, want_out)
            if not ok:
                out.append(
                    f"I2 request {rid}: upstream reported in {want_in} out {want_out}, ledger has in "
                    f"{row.input_tokens} out {row.output_tokens} (status {row.status})"
                )
        elif row.output_tokens == 0 and int(entry.get("events_written", 0)) > 2:
            out.append(
                f"I2 request {rid}: upstream wrote {entry['events_written']} chunks before the cut, ledger bills "
                f"0 output tokens (status {row.status})"
            )
    if unmatched > len(unknown_rows):
        out.append(
            f"I2 {unmatched} answers served to clients that never saw a head, only {len(unknown_rows)} "
            "ledger rows no client saw"
        )
    return out


# -- I3 --------------------------------------------------------------------------------------------------
def prices(org: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """µ$ per input and output token of each model (the file's $ per million tokens)."""
    out = {}
    for provider in org["providers"]:
        for model in provider["models"]:
            p = model.get("price") or {}
            out[model["id"]] = (
                _micro(p.get("input_per_mtok", 0)) // MICRO,
                _micro(p.get("output_per_mtok", 0)) // MICRO,
            )
    return out


def check_costs(org: Mapping[str, Any], rows: Iterable[Row]) -> Violations:
    out: Violations = []
    table = prices(org)
    for r in rows:
        if r.status not in SERVED_STATUSES:
            continue
        p_in, p_out = table.get(r.model_id or "", (0, 0))
        want = p_in * r.input_tokens + p_out * r.output_tokens
        if r.cost_micro != want:
            out.append(
                f"I3 request {r.request_id}: cost {r.cost_micro} µ$ != {p_in}x{r.input_tokens} in + "
                f"{p_out}x{r.output_tokens} out = {want} µ$ (status {r.status})"
            )
        f = r.funding or {}
        funded = int((f.get("allocation") or {}).get("cost", 0)) + sum(
            int(x[2]) for x in (f.get("extras") or {}).get("cost", ())
        )
        if funded + r.overage_micro != r.cost_micro:
            out.append(
                f"I3 request {r.request_id}: cost {r.cost_micro} µ$ but funded {funded} + overage "
                f"{r.overage_micro} = {funded + r.overage_micro} µ$ (status {r.status})"
            )
    return out


def check_all(
    org: Mapping[str, Any], rows: Sequence[Row], served: Sequence[Mapping[str, Any]], sent: Sequence[SentLike]
) -> Violations:
    return check_caps(org, rows) + check_served(served, rows, sent) + check_costs(org, rows)
