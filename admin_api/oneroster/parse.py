"""Each CSV file of a set as checked rows, every problem kept with its file, line and column.

Nothing here knows the database: this is what the files say on their own (the manifest, headers, each
row's values). References between files and to what earlier imports stored are `validate.py`'s.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError

from admin_api.oneroster.spec import (
    FILES,
    IGNORED_ROLES,
    MANIFEST,
    MODES,
    ROLE_MAP,
    SESSION_TYPES,
    VERSIONS,
    FileSpec,
)
from admin_api.roster import Profile

MAX_ROWS = 1_000_000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int  # 0: the file as a whole
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


@dataclass
class Row:
    sourced_id: str
    line: int
    active: bool  # False: `tobedeleted` (or, in a bulk file, left out of the set)
    data: dict[str, Any]  # what RosterRecord.data keeps (JSON values)


@dataclass
class FileRows:
    spec: FileSpec
    mode: str  # bulk | delta
    rows: dict[str, Row] = field(default_factory=dict)  # by sourcedId


@dataclass
class Parsed:
    files: dict[str, FileRows]  # by kind, only the files the manifest gives as bulk or delta
    manifest: dict[str, str]
    problems: list[Problem]
    # Kinds whose file the manifest gives but which could not be read (missing, not UTF-8, a bad header):
    # references to them are not checked, so one broken file is one problem, not one per row naming it.
    unreadable: set[str] = field(default_factory=set)


def _text(name: str, data: bytes, problems: list[Problem]) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(Problem(name, 0, "(file)", f"not UTF-8 (byte {exc.start})"))
        return None


def _records(name: str, text: str, problems: list[Problem]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        header = [h.strip() for h in next(reader, [])]
        for record in reader:
            if len(rows) >= MAX_ROWS:
                problems.append(Problem(name, reader.line_num, "(file)", f"more than {MAX_ROWS} rows"))
                break
            if record:
                rows.append((reader.line_num, record))
    except csv.Error as exc:
        problems.append(Problem(name, reader.line_num, "(file)", f"not valid CSV: {exc}"))
    return header, rows


def read_manifest(files: dict[str, bytes], problems: list[Problem]) -> tuple[dict[str, str], dict[str, int]]:
    """(property -> value, property -> line)."""
    if MANIFEST not in files:
        problems.append(Problem(MANIFEST, 0, "(file)", "missing: a OneRoster set starts with its manifest"))
        return {}, {}
    text = _text(MANIFEST, files[MANIFEST], problems)
    if text is None:
        return {}, {}
    header, rows = _records(MANIFEST, text, problems)
    for col in ("propertyName", "value"):
        if col not in header:
            problems.append(Problem(MANIFEST, 1, col, "missing required column"))
    if problems:
        return {}, {}
    name_at, value_at = header.index("propertyName"), header.index("value")
    props: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, record in rows:
        key = record[name_at].strip() if name_at < len(record) else ""
        value = record[value_at].strip() if value_at < len(record) else ""
        if key in props:
            problems.append(Problem(MANIFEST, line, "propertyName", f"{key} is already on line {lines[key]}"))
            continue
        props[key], lines[key] = value, line
        if key.startswith("file.") and value not in MODES:
            problems.append(
                Problem(MANIFEST, line, "value", f"{key} must be bulk, delta or absent, not {value!r}")
            )
    version = props.get("oneroster.version")
    if version not in VERSIONS:
        problems.append(Problem(MANIFEST, lines.get("oneroster.version", 0), "value",
                                f"oneroster.version must be 1.2, not {version!r}"))  # fmt: skip
    if "manifest.version" not in props:
        problems.append(Problem(MANIFEST, 0, "(file)", "no manifest.version property"))
    return props, lines


def parse_set(files: dict[str, bytes]) -> Parsed:
    problems: list[Problem] = []
    manifest, lines = read_manifest(files, problems)
    out: dict[str, FileRows] = {}
    out_unreadable: set[str] = set()
    if not manifest:
        return Parsed(out, manifest, problems)
    for spec in FILES:
        key = spec.manifest_key
        mode = manifest.get(key)
        present = spec.name in files
        if mode in ("bulk", "delta") and not present:
            out_unreadable.add(spec.kind)
            problems.append(
                Problem(MANIFEST, lines[key], "value", f"{key} is {mode} but {spec.name} is not in the set")
            )
        elif present and mode not in ("bulk", "delta"):
            where = lines.get(key, 0)
            problems.append(Problem(MANIFEST, where, "value" if where else "(file)",
                                    f"{spec.name} is in the set but {key} is {mode or 'not given'}"))  # fmt: skip
        elif present and mode is not None:
            rows = _parse_file(spec, mode, files[spec.name], problems)
            if rows is not None:
                out[spec.kind] = rows
            else:
                out_unreadable.add(spec.kind)
    return Parsed(out, manifest, problems, out_unreadable)


def _parse_file(spec: FileSpec, mode: str, data: bytes, problems: list[Problem]) -> FileRows | None:
    text = _text(spec.name, data, problems)
    if text is None:
        return None
    header, records = _records(spec.name, text, problems)
    known = set(spec.columns)
    header_ok = True
    for col in header:
        if col not in known and not col.startswith("metadata."):
            problems.append(Problem(spec.name, 1, col or "(blank)", "unknown column"))
    for col in spec.required:
        if col not in header:
            problems.append(Problem(spec.name, 1, col, "missing required column"))
            header_ok = False
    if len(set(header)) != len(header):
        problems.append(Problem(spec.name, 1, "(header)", "a column is named twice"))
        header_ok = False
    if not header_ok:
        return None
    out = FileRows(spec, mode)
    first: dict[str, int] = {}
    for line, record in records:
        if len(record) != len(header):
            problems.append(
                Problem(spec.name, line, "(row)", f"{len(record)} values for {len(header)} columns")
            )
            continue
        values = {h: v.strip() for h, v in zip(header, record, strict=True)}
        row = _row(spec, mode, line, values, problems)
        if row is None:
            continue
        if row.sourced_id in first:
            problems.append(Problem(spec.name, line, "sourcedId",
                                    f"duplicate sourcedId {row.sourced_id!r} (first on line {first[row.sourced_id]})"))  # fmt: skip
            continue
        first[row.sourced_id] = line
        out.rows[row.sourced_id] = row
    return out


def _date(spec: FileSpec, line: int, col: str, value: str, problems: list[Problem]) -> str | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        problems.append(Problem(spec.name, line, col, f"not a date (YYYY-MM-DD): {value!r}"))
        return None


def _row(spec: FileSpec, mode: str, line: int, v: dict[str, str], problems: list[Problem]) -> Row | None:
    before = len(problems)

    def bad(col: str, message: str) -> None:
        problems.append(Problem(spec.name, line, col, message))

    for col, value in v.items():
        if _CONTROL.search(value):
            bad(col, "contains control characters")
    sid = v.get("sourcedId", "")
    if not sid or len(sid) > 255:
        bad("sourcedId", "must be 1 to 255 characters")
    status = v.get("status", "")
    if mode == "delta" and status not in ("active", "tobedeleted"):
        bad("status", f"a delta file's rows are active or tobedeleted, not {status!r}")
    elif mode == "bulk" and status not in ("", "active", "tobedeleted"):
        bad("status", f"must be active or tobedeleted, not {status!r}")
    modified = v.get("dateLastModified", "")
    if mode == "delta" and not modified:
        bad("dateLastModified", "required in a delta file")
    elif modified:
        try:
            datetime.fromisoformat(modified)
        except ValueError:
            bad("dateLastModified", f"not an ISO 8601 date and time: {modified!r}")
    if len(problems) > before:
        return None
    if status == "tobedeleted":
        return Row(sid, line, False, {})
    for col in spec.values:
        if not v.get(col):
            bad(col, "required")
    # Kept even with problems in its values: the import is refused anyway, and references to this row
    # should not be reported as unknown on top of what is wrong with it.
    return Row(sid, line, True, _DATA[spec.kind](spec, line, v, problems))


def _org(spec: FileSpec, line: int, v: dict[str, str], problems: list[Problem]) -> dict[str, Any]:
    return {"name": v["name"], "type": v["type"], "parent": v.get("parentSourcedId") or None}


def _session(spec: FileSpec, line: int, v: dict[str, str], problems: list[Problem]) -> dict[str, Any]:
    start = _date(spec, line, "startDate", v["startDate"], problems)
    end = _date(spec, line, "endDate", v["endDate"], problems)
    if start and end and start > end:
        problems.append(Problem(spec.name, line, "endDate", f"{end} is before startDate {start}"))
    kind = v["type"]
    if kind and kind not in SESSION_TYPES and not kind.startswith("ext:"):
        problems.append(Problem(spec.name, line, "type", f"not a session type: {kind!r}"))
    return {"title": v["title"], "type": kind, "start": start, "end": end}


def _course(spec: FileSpec, line: int, v: dict[str, str], problems: list[Problem]) -> dict[str, Any]:
    return {"title": v["title"], "org": v["orgSourcedId"]}


def _class(spec: FileSpec, line: int, v: dict[str, str], problems: list[Problem]) -> dict[str, Any]:
    terms = [t.strip() for t in v["termSourcedIds"].split(",") if t.strip()]
    return {"title": v["title"][:200], "code": v.get("classCode") or None, "course": v["courseSourcedId"],
            "school": v["schoolSourcedId"], "terms": terms}  # fmt: skip


def _user(spec: FileSpec, line: int, v: dict[str, str], problems: list[Problem]) -> dict[str, Any]:
    enabled = v["enabledUser"].lower()
    if enabled not in ("true", "false"):
        problems.append(
            Problem(spec.name, line, "enabledUser", f"must be true or false, not {v['enabledUser']!r}")
        )
    name = " ".join(p for p in (v.get("preferredGivenName") or v["givenName"], v["familyName"]) if p)
    email = v.get("email") or None
    try:
        Profile(email=email, name=name)
    except ValidationError as exc:
        for err in exc.errors():
            col = "email" if err["loc"][0] == "email" else "givenName"
            problems.append(Problem(spec.name, line, col, f"not accepted: {err['msg']}"))
    username = v.get("username") or None
    if username is not None and len(username) > 255:
        problems.append(Problem(spec.name, line, "username", "longer than 255 characters"))
    return {"enabled": enabled == "true", "username": username, "email": email, "name": name}


def _enrollment(spec: FileSpec, line: int, v: dict[str, str], problems: list[Problem]) -> dict[str, Any]:
    role = v["role"]
    if role not in ROLE_MAP and role not in IGNORED_ROLES:
        known = ", ".join([*ROLE_MAP, *sorted(IGNORED_ROLES)])
        problems.append(Problem(spec.name, line, "role", f"not an enrollment role ({known}): {role!r}"))
    begin = _date(spec, line, "beginDate", v.get("beginDate", ""), problems)
    end = _date(spec, line, "endDate", v.get("endDate", ""), problems)
    if begin and end and begin > end:
        problems.append(Problem(spec.name, line, "endDate", f"{end} is before beginDate {begin}"))
    return {"class": v["classSourcedId"], "user": v["userSourcedId"], "school": v["schoolSourcedId"],
            "role": role, "begin": begin, "end": end}  # fmt: skip


_DATA = {"org": _org, "session": _session, "course": _course, "class": _class, "user": _user,
         "enrollment": _enrollment}  # fmt: skip
