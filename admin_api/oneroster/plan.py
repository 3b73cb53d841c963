"""From checked files and the database's current state to the rows to write, or to every problem.

The files are merged with what earlier imports stored (a bulk file replaces its kind whole, a delta file
changes the rows it names, an absent file keeps what was), references are checked on the merged set, and
the result is compared with the database: only differences are written, so importing the same set twice
writes nothing the second time.

People are recognised as SSO recognises them (admin_api/sso/provisioning.py finds a person by their SSO
subject): the roster's `username` (or `email`, as the `roster:` section says) is the subject, so a rostered
student who signs in later is the same user, and a person who signed in or was listed in the institution
file before is linked to the roster, not created again. E-mail is the second way to recognise someone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from admin_api.oneroster.parse import Parsed, Problem
from admin_api.oneroster.spec import BY_KIND, FILES, ROLE_MAP, ROLE_RANK
from admin_api.oneroster.state import Current, UserRow
from admin_api.orgfile.rows import membership_end

SOURCE = "roster"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_NOT_SLUG = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class Plan:
    problems: list[Problem] = field(default_factory=list)
    new_units: list[tuple[str, str, str]] = field(default_factory=list)  # id, parent, name
    # id, parent, name, archived
    changed_units: list[tuple[str, str | None, str, bool]] = field(default_factory=list)
    new_users: list[tuple[str, str | None, str | None, str | None, str]] = field(default_factory=list)
    changed_users: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # id, email, name
    new_members: list[tuple[str, str, str, datetime | None]] = field(default_factory=list)
    changed_members: list[tuple[str, str, str, datetime | None]] = field(default_factory=list)
    ended_members: list[tuple[str, str]] = field(default_factory=list)
    records: list[tuple[str, str, str | None, dict[str, Any]]] = field(default_factory=list)  # to write
    dropped_records: list[tuple[str, str]] = field(default_factory=list)
    linked_users: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def changes(self) -> dict[str, int]:
        return {
            "units_created": len(self.new_units),
            "units_updated": len(self.changed_units),
            "users_created": len(self.new_users),
            "users_updated": len(self.changed_users),
            "memberships_added": len(self.new_members),
            "memberships_changed": len(self.changed_members),
            "memberships_ended": len(self.ended_members),
            "records_written": len(self.records),
            "records_dropped": len(self.dropped_records),
        }

    @property
    def changed(self) -> bool:
        return any(self.changes.values())


def _slug(value: str, salt: str) -> str:
    """`value` when it is a valid id; else its id-safe characters with a stable suffix (never two the same)."""
    if _SLUG.match(value):
        return value
    base = _NOT_SLUG.sub("-", value).strip("-._")[:100] or "roster"
    return f"{base}-{hashlib.sha256(salt.encode()).hexdigest()[:8]}"


def subject_of(data: dict[str, Any], how: str, domain: str | None) -> str | None:
    """The SSO subject the IdP will assert for this roster person (the `roster:` section's rule)."""
    if how == "email":
        return data.get("email") or None
    username = data.get("username")
    if how != "username" or not username:
        return None
    return f"{username}@{domain}" if domain and "@" not in username else str(username)


def build_plan(parsed: Parsed, cur: Current, now: datetime) -> Plan:
    plan = Plan(problems=list(parsed.problems))
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in FILES:
        stored = {sid: data for sid, (_, data) in cur.records.get(spec.kind, {}).items()}
        fr = parsed.files.get(spec.kind)
        if fr is not None and fr.mode == "bulk":
            stored = {sid: row.data for sid, row in fr.rows.items() if row.active}
        elif fr is not None:
            for sid, row in fr.rows.items():
                if row.active:
                    stored[sid] = row.data
                else:
                    stored.pop(sid, None)
        merged[spec.kind] = stored
    _check_references(parsed, merged, plan)
    placed = _place_classes(parsed, merged, cur, plan)
    unit_of = {sid: unit for sid, (unit, _) in placed.items()}
    user_of = _link_people(parsed, merged, cur, plan)
    if plan.problems:
        plan.problems.sort()
        return plan
    _plan_units(merged, placed, cur, plan)
    _plan_memberships(merged, unit_of, user_of, cur, now, plan)
    targets = {"class": unit_of, "user": user_of}
    for spec in FILES:
        previous = cur.records.get(spec.kind, {})
        for sid, data in merged[spec.kind].items():
            target = targets.get(spec.kind, {}).get(sid)
            kept = kept_form(spec.kind, data)
            if previous.get(sid) != (target, kept):
                plan.records.append((spec.kind, sid, target, kept))
        plan.dropped_records += [(spec.kind, sid) for sid in previous if sid not in merged[spec.kind]]
    return plan


def kept_form(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """What the database keeps of a roster row. A person's username, e-mail and name are not kept, only
    their digest (to see that they changed): they live on the user row, where erasure blanks them, and a
    copy here would outlive an erasure. A delta needs of a person only whether they are enabled and who
    they became (`target`)."""
    if kind != "user" or "digest" in data:
        return data
    personal = {k: data.get(k) for k in ("username", "email", "name")}
    digest = hashlib.sha256(json.dumps(personal, sort_keys=True).encode()).hexdigest()
    return {"enabled": bool(data.get("enabled", True)), "digest": digest}


def _file_rows(parsed: Parsed, kind: str) -> list[tuple[str, int, dict[str, Any]]]:
    fr = parsed.files.get(kind)
    return [(sid, r.line, r.data) for sid, r in fr.rows.items() if r.active] if fr else []


_NOUNS = {"org": "org", "session": "academic session", "course": "course", "class": "class", "user": "user"}


def _check_references(parsed: Parsed, merged: dict[str, dict[str, dict[str, Any]]], plan: Plan) -> None:
    """Every reference a file's row makes names something the merged set holds."""
    refs = {  # kind -> [(column, field, target kind)]
        "org": [("parentSourcedId", "parent", "org")],
        "course": [("orgSourcedId", "org", "org")],
        "class": [("courseSourcedId", "course", "course"), ("schoolSourcedId", "school", "org"),
                  ("termSourcedIds", "terms", "session")],
        "enrollment": [("classSourcedId", "class", "class"), ("userSourcedId", "user", "user"),
                       ("schoolSourcedId", "school", "org")],
    }  # fmt: skip
    for kind, checks in refs.items():
        name = BY_KIND[kind].name
        for _, line, data in _file_rows(parsed, kind):
            for column, key, target in checks:
                value = data.get(key)
                if target in parsed.unreadable:
                    continue
                for ref in value if isinstance(value, list) else [value]:
                    if ref is not None and ref not in merged[target]:
                        plan.problems.append(Problem(name, line, column, f"unknown {_NOUNS[target]} {ref!r}"))


def _parent_unit(
    org: str | None, orgs: dict[str, dict[str, Any]], mapping: dict[str, str], default: str | None
) -> str | None:
    """The unit a school's classes go under: its own mapping, else its nearest mapped parent org's."""
    seen: set[str] = set()
    while org is not None and org not in seen:
        if org in mapping:
            return mapping[org]
        seen.add(org)
        org = orgs.get(org, {}).get("parent")
    return default


def _place_classes(
    parsed: Parsed, merged: dict[str, dict[str, dict[str, Any]]], cur: Current, plan: Plan
) -> dict[str, tuple[str, str]]:
    """class sourcedId -> (its unit id, the parent unit); a class that cannot be placed is a problem naming
    it (its line, or its sourcedId when an earlier import brought it and the mapping changed since)."""
    roster = cur.roster
    lines = {sid: line for sid, line, _ in _file_rows(parsed, "class")}
    stored = cur.records.get("class", {})
    out: dict[str, tuple[str, str]] = {}
    claimed: dict[str, str] = {}
    for sid, data in merged["class"].items():
        line = lines.get(sid, 0)
        column = "schoolSourcedId" if line else f"class {sid!r}"
        if data.get("school") not in merged["org"]:
            continue  # an unknown org: a reference problem already (or its file could not be read)
        parent = _parent_unit(data.get("school"), merged["org"], roster.orgs, roster.default_unit)
        if parent is None:
            plan.problems.append(Problem("classes.csv", line, column, f"school {data.get('school')!r} (nor any "
                                         "org above it) is not mapped in the institution file's roster.orgs, "
                                         "and there is no roster.default_unit"))  # fmt: skip
            continue
        unit = cur.units.get(parent)
        if unit is None or unit.archived or unit.source == SOURCE:
            state = "unknown" if unit is None else ("archived" if unit.archived else "a roster class")
            plan.problems.append(
                Problem("classes.csv", line, column, f"maps to unit {parent!r}, which is {state}")
            )
            continue
        target = stored.get(sid, (None, {}))[0] or _slug(sid, "class:" + sid)
        existing = cur.units.get(target)
        column = "sourcedId" if line else column
        if existing is not None and existing.source != SOURCE:
            plan.problems.append(Problem("classes.csv", line, column, f"would be unit {target!r}, which the "
                                         "institution file or the admin API made"))  # fmt: skip
        elif target in claimed:
            plan.problems.append(Problem("classes.csv", line, column, f"would be unit {target!r}, as class "
                                         f"{claimed[target]!r} is"))  # fmt: skip
        else:
            claimed[target] = sid
            out[sid] = (target, parent)
    return out


def _link_people(
    parsed: Parsed, merged: dict[str, dict[str, dict[str, Any]]], cur: Current, plan: Plan
) -> dict[str, str]:
    """user sourcedId -> user id: the person an earlier import linked, else the roster-made user of that
    sourcedId, else the person whose SSO subject is the roster's subject for them, else the one person with
    their e-mail, else a new user (planned here)."""
    roster = cur.roster
    lines = {sid: line for sid, line, _ in _file_rows(parsed, "user")}
    stored = cur.records.get("user", {})
    by_external = {u.external_id: u.id for u in cur.users.values() if u.source == SOURCE and u.external_id}
    by_subject: dict[str, str] = {}
    by_email: dict[str, list[str]] = {}
    for u in cur.users.values():
        if u.sso_subject:
            by_subject[u.sso_subject.strip().lower()] = u.id
        if u.email:
            by_email.setdefault(u.email.strip().lower(), []).append(u.id)
    out: dict[str, str] = {}
    owner: dict[str, str] = {}  # user id -> sourcedId linked to it
    new_subjects: dict[str, str] = {}
    taken = set(cur.users)
    for sid, data in merged["user"].items():
        line = lines.get(sid, 0)

        def problem(column: str, message: str, line: int = line, sid: str = sid) -> None:
            plan.problems.append(Problem("users.csv", line, column if line else f"user {sid!r}", message))

        subject = subject_of(data, roster.sso_subject, roster.subject_domain)
        email = (data.get("email") or "").strip().lower()
        uid = stored.get(sid, (None, {}))[0]
        if uid is None or uid not in cur.users:
            uid = by_external.get(sid)
        if uid is None and sid not in lines:
            continue  # known only from an earlier file, and their user is gone: their enrollments are skipped
        if uid is None and subject:
            uid = by_subject.get(subject.strip().lower())
            by_mail = by_email.get(email, []) if email else []
            if uid is not None and by_mail and uid not in by_mail and len(by_mail) == 1:
                problem(
                    "email", f"the SSO subject {subject!r} is {uid!r}'s but this e-mail is {by_mail[0]!r}'s"
                )
                continue
        if uid is None and email:
            found = by_email.get(email, [])
            if len(found) > 1:
                problem("email", f"{len(found)} people have this e-mail ({', '.join(sorted(found))})")
                continue
            uid = found[0] if found else None
        if uid is not None:
            if uid in owner:
                problem("sourcedId", f"is the same person ({uid!r}) as user {owner[uid]!r}")
                continue
            owner[uid] = sid
            out[sid] = uid
            row: UserRow = cur.users[uid]
            if row.source != SOURCE and stored.get(sid, (None, {}))[0] != uid:
                plan.linked_users += 1
            if (
                row.source == SOURCE
                and sid in lines
                and not row.erased
                and (row.email, row.name) != (data.get("email"), data.get("name"))
            ):
                plan.changed_users.append((uid, data.get("email"), data.get("name")))
            continue
        if subject and subject.strip().lower() in new_subjects:
            problem(
                "username",
                f"the SSO subject {subject!r} is also user {new_subjects[subject.strip().lower()]!r}'s",
            )
            continue
        base = data.get("username") or sid
        uid = _slug(base.split("@")[0] if roster.subject_domain else base, "user:" + sid)
        if uid in taken:
            uid = _slug(f"{uid}-{hashlib.sha256(sid.encode()).hexdigest()[:8]}", "user:" + sid)
        taken.add(uid)
        if subject:
            new_subjects[subject.strip().lower()] = sid
        owner[uid] = sid
        out[sid] = uid
        plan.new_users.append((uid, data.get("email"), data.get("name"), subject, sid))
    return out


def _plan_units(
    merged: dict[str, dict[str, dict[str, Any]]], placed: dict[str, tuple[str, str]], cur: Current, plan: Plan
) -> None:
    wanted: set[str] = set()
    for sid, (unit_id, parent) in placed.items():
        data = merged["class"][sid]
        name = str(data.get("title") or sid)
        wanted.add(unit_id)
        row = cur.units.get(unit_id)
        if row is None:
            plan.new_units.append((unit_id, parent, name))
        elif (row.parent_id, row.name, row.archived) != (parent, name, False):
            plan.changed_units.append((unit_id, parent, name, False))
    for unit_id, row in cur.units.items():
        if row.source == SOURCE and unit_id not in wanted and not row.archived:
            plan.changed_units.append((unit_id, row.parent_id, row.name or unit_id, True))


def _ends(
    enrollment: dict[str, Any], cls: dict[str, Any], sessions: dict[str, dict[str, Any]], tz: ZoneInfo
) -> datetime | None:
    """The enrollment's endDate, else the latest end of its class's terms, as that day closes locally."""
    last = enrollment.get("end")
    if last is None:
        ends = [sessions[t]["end"] for t in cls.get("terms", []) if t in sessions and sessions[t].get("end")]
        last = max(ends) if ends else None
    return membership_end(date.fromisoformat(last), tz) if last else None


def _plan_memberships(
    merged: dict[str, dict[str, dict[str, Any]]],
    unit_of: dict[str, str],
    user_of: dict[str, str],
    cur: Current,
    now: datetime,
    plan: Plan,
) -> None:
    tz = ZoneInfo(cur.timezone)
    today = now.astimezone(tz).date().isoformat()
    desired: dict[tuple[str, str], tuple[str, datetime | None]] = {}
    for e in merged["enrollment"].values():
        role = ROLE_MAP.get(e["role"])
        cls, person = merged["class"].get(e["class"]), merged["user"].get(e["user"])
        if role is None:
            plan.skipped[f"role {e['role']}"] += 1
            continue
        if cls is None or person is None or e["class"] not in unit_of or e["user"] not in user_of:
            plan.skipped["class or user removed"] += 1
            continue
        if not person.get("enabled", True):
            plan.skipped["user not enabled"] += 1
            continue
        if e.get("begin") and e["begin"] > today:
            plan.skipped["not begun yet"] += 1
            continue
        pair = (unit_of[e["class"]], user_of[e["user"]])
        ends = _ends(e, cls, merged["session"], tz)
        held = desired.get(pair)
        if held is not None:  # enrolled twice in one class: the higher role, the later end
            later = None if held[1] is None or ends is None else max(held[1], ends)
            role = min(role, held[0], key=ROLE_RANK.__getitem__)
            ends = later
        desired[pair] = (role, ends)
    for pair, (role, ends) in desired.items():
        current = cur.memberships.get(pair)
        if current is None:
            plan.new_members.append((*pair, role, ends))
        elif current[2] != SOURCE:
            plan.skipped["membership held by another source"] += 1
        elif (current[0], current[1]) != (role, ends):
            plan.changed_members.append((*pair, role, ends))
    for pair, (_, ends_at, source) in cur.memberships.items():
        if source == SOURCE and pair not in desired and (ends_at is None or ends_at > now):
            plan.ended_members.append(pair)
