"""Rules that relate one part of the institution file to another (docs/spec/org-file.md, "Rules the import checks").

They read the raw document defensively rather than the parsed model, so that a
file with a type error in one place still gets every cross-reference problem
listed too: an IT admin fixes the whole file in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from admin_api.scim.config import scim_checks
from core.keys import hash_secret

Problem = tuple[str, str]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def walk_units(
    units: Any, base: str = "units"
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """Each unit with its path in the file and its parent, parents first."""
    stack: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
        (f"{base}[{i}]", _dict(u), None) for i, u in enumerate(_list(units))
    ]
    stack.reverse()
    while stack:
        path, unit, parent = stack.pop()
        yield path, unit, parent
        children = [
            (f"{path}.children[{i}]", _dict(c), unit) for i, c in enumerate(_list(unit.get("children")))
        ]
        stack.extend(reversed(children))


def _duplicates(items: list[tuple[str, Any]], what: str) -> list[Problem]:
    seen: dict[Any, str] = {}
    problems = []
    for path, value in items:
        if value is None:
            continue
        if value in seen:
            problems.append((path, f"duplicate {what} {value!r} (first at {seen[value]})"))
        else:
            seen[value] = path
    return problems


def cross_checks(doc: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    inst = _dict(doc.get("institution"))
    tz = inst.get("timezone")
    if isinstance(tz, str):
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(("institution.timezone", f"unknown time zone {tz!r}"))
    semesters = _list(inst.get("semesters"))
    for i, sem in enumerate(semesters):
        sem = _dict(sem)
        if str(sem.get("start", "")) > str(sem.get("end", "~")):
            problems.append((f"institution.semesters[{i}]", "start must not be after end"))

    users = _list(doc.get("users"))
    user_ids = {_dict(u).get("id") for u in users}
    problems += _duplicates([(f"users[{i}].id", _dict(u).get("id")) for i, u in enumerate(users)], "user id")

    providers = _list(doc.get("providers"))
    problems += _duplicates(
        [(f"providers[{i}].id", _dict(p).get("id")) for i, p in enumerate(providers)], "provider id"
    )
    catalogue: set[str] = set()
    for i, prov in enumerate(providers):
        models = _list(_dict(prov).get("models"))
        ids = [(f"providers[{i}].models[{j}].id", _dict(m).get("id")) for j, m in enumerate(models)]
        problems += _duplicates(ids, "model id in this provider")
        catalogue.update(v for _, v in ids if isinstance(v, str))

    roots = _list(doc.get("units"))
    if len(roots) > 1:
        problems.append(("units", f"exactly one root unit (the institution) is allowed, found {len(roots)}"))
    units = list(walk_units(roots))
    problems += _duplicates([(f"{p}.id", u.get("id")) for p, u, _ in units], "unit id")
    all_extras = [
        (f"{p}.extras[{j}].id", _dict(e).get("id"))
        for p, u, _ in units
        for j, e in enumerate(_list(u.get("extras")))
    ]
    problems += _duplicates(all_extras, "extra id")

    if roots:
        problems += _root_checks(_dict(roots[0]))
    if doc.get("fair_share") is not None:
        names = {u.get("id") for _, u, _ in units} | {u.get("kind") for _, u, _ in units}
        problems += fair_share_checks(_dict(doc.get("fair_share")), names)

    effective: dict[int, set[str]] = {}
    members_of: dict[str, set[str]] = {}
    unit_ids = {u.get("id") for _, u, _ in units}
    for path, unit, parent in units:
        allowed = effective.get(id(parent), catalogue) if parent is not None else catalogue
        mine = unit.get("models")
        if isinstance(mine, list):
            for j, model in enumerate(mine):
                if model not in catalogue:
                    problems.append((f"{path}.models[{j}]", f"unknown model {model!r}"))
                elif model not in allowed:
                    problems.append((f"{path}.models[{j}]", f"{model!r} is not allowed by the parent unit"))
            allowed = allowed & set(m for m in mine if isinstance(m, str))
        effective[id(unit)] = allowed
        default = unit.get("default_model")
        if default is not None and default not in allowed:
            problems.append(
                (f"{path}.default_model", f"{default!r} is not among the models this unit may use")
            )
        budget = _dict(unit.get("budget"))
        if budget.get("period") == "semester" and not semesters:
            problems.append((f"{path}.budget.period", "period 'semester' needs institution.semesters"))
        for j, extra in enumerate(_list(unit.get("extras"))):
            extra = _dict(extra)
            if str(extra.get("valid_from", "")) > str(extra.get("valid_to", "~")):
                problems.append((f"{path}.extras[{j}]", "valid_from must not be after valid_to"))
        for j, member in enumerate(_list(unit.get("members"))):
            uid = _dict(member).get("user")
            if uid not in user_ids:
                problems.append((f"{path}.members[{j}].user", f"unknown user {uid!r}"))
            members_of.setdefault(str(unit.get("id")), set()).add(str(uid))
        for field in ("admins", "finance", "auditors"):
            for j, uid in enumerate(_list(unit.get(field))):
                if uid not in user_ids:
                    problems.append((f"{path}.{field}[{j}]", f"unknown user {uid!r}"))

    for i, key in enumerate(_list(doc.get("keys"))):
        key = _dict(key)
        uid, unit_id = key.get("user"), key.get("unit")
        if uid not in user_ids:
            problems.append((f"keys[{i}].user", f"unknown user {uid!r}"))
        if unit_id not in unit_ids:
            problems.append((f"keys[{i}].unit", f"unknown unit {unit_id!r}"))
        elif uid in user_ids and str(uid) not in members_of.get(str(unit_id), set()):
            problems.append((f"keys[{i}]", f"user {uid!r} is not a member of unit {unit_id!r}"))
    problems += _duplicates(
        [(f"keys[{i}]", _key_digest(k)) for i, k in enumerate(_list(doc.get("keys")))], "key (SHA-256)"
    )
    problems += roster_checks(_dict(doc.get("roster")), unit_ids)
    problems += scim_checks(_dict(doc.get("scim")), unit_ids)
    return problems


def roster_checks(roster: dict[str, Any], unit_ids: set[Any]) -> list[Problem]:
    """The `roster:` section places classes under units of this file only."""
    problems = [(f"roster.orgs.{org}", f"unknown unit {unit!r}")
                for org, unit in _dict(roster.get("orgs")).items() if unit not in unit_ids]  # fmt: skip
    default = roster.get("default_unit")
    if default is not None and default not in unit_ids:
        problems.append(("roster.default_unit", f"unknown unit {default!r}"))
    return problems


def _key_digest(entry: Any) -> str | None:
    """One key given twice, whether as the key or as its SHA-256 (never the key itself in a message)."""
    key, digest = _dict(entry).get("key"), _dict(entry).get("key_sha256")
    if isinstance(key, str):
        return hash_secret(key)
    return digest.lower() if isinstance(digest, str) else None


def _root_checks(root: dict[str, Any]) -> list[Problem]:
    budget = _dict(root.get("budget"))
    metrics = [m for m in ("cost", "tokens") if m in budget]
    if not metrics:
        return [("units[0].budget", "the root unit needs a fixed budget (cost or tokens)")]
    return [
        (f"units[0].budget.{m}", "the root unit's budget must be fixed, not a percent")
        for m in metrics
        if "fixed" not in _dict(budget.get(m))
    ]


def fair_share_checks(fair: dict[str, Any], names: set[Any], base: str = "fair_share") -> list[Problem]:
    """Every weight names a unit or a unit kind of the file, and the windows are ordered and disjoint
    (two windows on one day would make that day's weights depend on the order they are read in)."""
    problems: list[Problem] = []

    def known(weights: Any, path: str) -> None:
        for key in _dict(weights):
            if key not in names:
                problems.append((f"{path}.{key}", f"no unit or unit kind {key!r} in this file"))

    known(fair.get("weights"), f"{base}.weights")
    spans: list[tuple[int, str, str, str]] = []
    for i, win in enumerate(_list(fair.get("windows"))):
        win = _dict(win)
        known(win.get("weights"), f"{base}.windows[{i}].weights")
        start, end = str(win.get("from", "")), str(win.get("to", ""))
        if start and end and start > end:
            problems.append((f"{base}.windows[{i}]", f"from {start} is after to {end}"))
            continue
        for j, other_start, other_end, other_name in spans:
            if start <= other_end and other_start <= end:
                problems.append((f"{base}.windows[{i}]", f"overlaps windows[{j}] ({other_name})"))
                break
        spans.append((i, start, end, str(win.get("name", ""))))
    return problems
