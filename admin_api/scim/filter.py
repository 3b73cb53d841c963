"""SCIM filter expressions (RFC 7644 §3.4.2.2) and PATCH paths (§3.5.2), parsed into a small tree.

A hand-written recursive-descent parser with hard bounds (MAX_FILTER_LENGTH characters, MAX_NODES
comparisons, MAX_DEPTH nesting), so no filter an IdP or an attacker sends can make the server work
without limit; anything it cannot read is `invalidFilter` (or `invalidPath` for a PATCH path), never a
500. `query.py` turns a tree into SQL; `matches` evaluates one against a JSON object (PATCH value filters
such as `members[value eq "..."]`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from admin_api.scim.errors import ScimError, invalid_filter, invalid_path

MAX_FILTER_LENGTH = 2048
MAX_NODES = 64
MAX_DEPTH = 16
COMPARE_OPS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"})

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<lpar>\() | (?P<rpar>\)) | (?P<lbr>\[) | (?P<rbr>\]) |
      (?P<string>"(?:[^"\\]|\\.)*") |
      (?P<word>[A-Za-z0-9_:.$\-+]+)
    )""",
    re.VERBOSE,
)
_ATTR = re.compile(
    r"^(?:(?P<urn>urn:[A-Za-z0-9:._\-]+):)?(?P<attr>[A-Za-z$][\w$\-]*)(?:\.(?P<sub>[A-Za-z$][\w$\-]*))?$"
)


@dataclass(frozen=True)
class AttrPath:
    urn: str | None  # the schema URN when written in full, lower-cased
    attr: str  # lower-cased: SCIM attribute names are case-insensitive
    sub: str | None = None

    @property
    def dotted(self) -> str:
        return self.attr + ("." + self.sub if self.sub else "")


@dataclass(frozen=True)
class Compare:
    path: AttrPath
    op: str
    value: Any


@dataclass(frozen=True)
class Present:
    path: AttrPath


@dataclass(frozen=True)
class Logical:
    op: str  # and | or
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class ValuePath:
    """`emails[type eq "work"]`: the elements of a multi-valued attribute that match `filter`."""

    path: AttrPath
    filter: Node


Node = Compare | Present | Logical | Not | ValuePath


def parse_attr_path(text: str, error: type[Exception] | None = None) -> AttrPath:
    found = _ATTR.match(text)
    if found is None:
        raise invalid_filter(f"not an attribute path: {text[:80]!r}")
    urn = found["urn"].lower() if found["urn"] else None
    return AttrPath(urn, found["attr"].lower(), found["sub"].lower() if found["sub"] else None)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise invalid_filter(f"unexpected character at position {pos}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0
        self.nodes = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise invalid_filter("the filter ends too early")
        self.i += 1
        return tok

    def keyword(self, *words: str) -> str | None:
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1].lower() in words:
            self.i += 1
            return tok[1].lower()
        return None

    def expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise invalid_filter(f"the filter nests deeper than {MAX_DEPTH}")
        node = self.term(depth)
        while self.keyword("or"):
            node = Logical("or", node, self.term(depth))
        return node

    def term(self, depth: int) -> Node:
        node = self.factor(depth)
        while self.keyword("and"):
            node = Logical("and", node, self.factor(depth))
        return node

    def factor(self, depth: int) -> Node:
        if self.keyword("not"):
            return Not(self.factor(depth + 1))
        tok = self.take()
        if tok[0] == "lpar":
            node = self.expr(depth + 1)
            if self.take()[0] != "rpar":
                raise invalid_filter("a '(' is not closed")
            return node
        if tok[0] != "word":
            raise invalid_filter(f"expected an attribute, found {tok[1][:40]!r}")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise invalid_filter(f"the filter has more than {MAX_NODES} comparisons")
        path = parse_attr_path(tok[1])
        nxt = self.peek()
        if nxt and nxt[0] == "lbr":
            self.i += 1
            inner = self.expr(depth + 1)
            if self.take()[0] != "rbr":
                raise invalid_filter("a '[' is not closed")
            return ValuePath(path, inner)
        op_tok = self.take()
        op = op_tok[1].lower()
        if op_tok[0] != "word" or (op != "pr" and op not in COMPARE_OPS):
            raise invalid_filter(f"unknown operator {op_tok[1][:40]!r}")
        if op == "pr":
            return Present(path)
        return Compare(path, op, self.value())

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "string":
            try:
                return json.loads(text)
            except ValueError:
                raise invalid_filter("a string in the filter is not valid JSON") from None
        if kind == "word":
            low = text.lower()
            if low in ("true", "false"):
                return low == "true"
            if low == "null":
                return None
            try:
                return json.loads(text)
            except ValueError:
                pass
        raise invalid_filter(f"expected a value, found {text[:40]!r}")


def parse_filter(text: str) -> Node:
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid_filter(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        raise invalid_filter("the filter is empty")
    parser = _Parser(text)
    node = parser.expr(0)
    if parser.peek() is not None:
        raise invalid_filter(f"unexpected {parser.peek()[1][:40]!r} after the expression")  # type: ignore[index]
    return node


@dataclass(frozen=True)
class PatchPath:
    """`attr`, `attr.sub`, `urn:...:attr`, `attr[filter]` or `attr[filter].sub`."""

    path: AttrPath
    filter: Node | None = None
    sub: str | None = None


def parse_patch_path(text: str) -> PatchPath:
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid_path(f"the path is longer than {MAX_FILTER_LENGTH} characters")
    try:
        if "[" not in text:
            return PatchPath(parse_attr_path(text.strip()))
        head, _, rest = text.partition("[")
        inner, close, tail = rest.rpartition("]")
        if not close:
            raise invalid_path("a '[' is not closed")
        sub = None
        if tail:
            if not tail.startswith(".") or not re.fullmatch(r"\.[A-Za-z$][\w$\-]*", tail):
                raise invalid_path(f"cannot read {tail[:40]!r} after ']'")
            sub = tail[1:].lower()
        return PatchPath(parse_attr_path(head.strip()), parse_filter(inner), sub)
    except ScimError as exc:
        if exc.scim_type == "invalidFilter":
            raise invalid_path(exc.detail) from None
        raise


def _lookup(obj: dict[str, Any], name: str) -> Any:
    for key, value in obj.items():
        if key.lower() == name:
            return value
    return None


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if isinstance(actual, list):
        return any(_compare(a, op, expected) for a in actual)
    if isinstance(actual, str) and isinstance(expected, str):
        a, e = actual.lower(), expected.lower()
    else:
        a, e = actual, expected
    if op == "eq":
        return bool(a == e)
    if op == "ne":
        return bool(a != e)
    if not isinstance(a, str) or not isinstance(e, str):
        if op in ("gt", "ge", "lt", "le") and isinstance(a, int | float) and isinstance(e, int | float):
            return {"gt": a > e, "ge": a >= e, "lt": a < e, "le": a <= e}[op]
        return False
    return {"co": e in a, "sw": a.startswith(e), "ew": a.endswith(e),
            "gt": a > e, "ge": a >= e, "lt": a < e, "le": a <= e}[op]  # fmt: skip


def matches(node: Node, obj: dict[str, Any]) -> bool:
    """Does the JSON object `obj` (a resource, or one element of a multi-valued attribute) match?"""
    if isinstance(node, Logical):
        if node.op == "and":
            return matches(node.left, obj) and matches(node.right, obj)
        return matches(node.left, obj) or matches(node.right, obj)
    if isinstance(node, Not):
        return not matches(node.inner, obj)
    if isinstance(node, ValuePath):
        items = _lookup(obj, node.path.attr)
        return isinstance(items, list) and any(isinstance(i, dict) and matches(node.filter, i) for i in items)
    value = _lookup(obj, node.path.attr)
    if node.path.sub is not None:
        if isinstance(value, list):
            value = [_lookup(v, node.path.sub) for v in value if isinstance(v, dict)]
        elif isinstance(value, dict):
            value = _lookup(value, node.path.sub)
        else:
            value = None
    if isinstance(node, Present):
        return value not in (None, "", [], {})
    return _compare(value, node.op, node.value)
