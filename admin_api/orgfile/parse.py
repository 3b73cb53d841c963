"""Read an institution file into a checked `OrgFile`, or fail with every problem by its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from admin_api.orgfile.checks import Problem, cross_checks
from admin_api.orgfile.schema import OrgFile
from admin_api.sso.config import SSOConfigError, parse_sso_section
from providers.config import compile_deployments
from providers.errors import ConfigError
from providers.upstream_policy import UpstreamPolicy


class OrgFileError(Exception):
    """The file is refused whole; `problems` lists each one as (path in the file, message)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {msg}" for path, msg in problems))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(file)"


def _message(err: dict[str, Any]) -> str:
    loc = err["loc"]
    kind = err["type"]
    if loc and loc[-1] == "percent" and kind in ("less_than_equal", "greater_than_equal"):
        return "must be 0..100"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _split(problem: str) -> Problem:
    path, _, message = problem.partition(": ")
    return (path, message) if message else ("providers", problem)


def parse_document(doc: Any, policy: UpstreamPolicy | None = None) -> OrgFile:
    """`policy`: the operator's, applied for the file's institution (secret variables not declared for it,
    literal credential headers and non-public upstream addresses are problems of the file, as the gateway
    would disable such providers)."""
    if not isinstance(doc, dict):
        raise OrgFileError([("(file)", "must be a YAML mapping with institution, units, users, ...")])
    problems: list[Problem] = []
    model: OrgFile | None = None
    try:
        model = OrgFile.model_validate(doc)
    except ValidationError as exc:
        problems += [(_path(e["loc"]), _message(dict(e))) for e in exc.errors()]
    problems += cross_checks(doc)
    if model is not None:
        try:
            scoped = policy.for_institution(model.institution.id) if policy is not None else None
            compile_deployments(model.providers, currency=model.institution.currency, policy=scoped)
        except ConfigError as exc:
            problems += [_split(p) for p in exc.problems]
        try:  # the sign-in settings, with the secret variables the operator declared for SSO
            parse_sso_section(model.institution.id, model.sso or None)
        except SSOConfigError as exc:
            problems += exc.problems
    if problems or model is None:
        raise OrgFileError(_dedupe(problems))
    return model


def _dedupe(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def load_file(path: Path, policy: UpstreamPolicy | None = None) -> OrgFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OrgFileError([("(file)", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise OrgFileError([(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return parse_document(doc, policy)
