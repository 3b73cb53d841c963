"""PATCH (RFC 7644 §3.5.2) applied to a resource's JSON: the result is then stored as a PUT would store
it, so PATCH and PUT share one set of checks.

What IdPs actually send is accepted: operation names in any case (Entra ID's "Replace"), path-less
operations whose value holds several attributes (dotted or extension-URN keys included), string booleans
(`"False"`, read by `resources.py`), `emails[type eq "work"].value` on a person with no work address
(the element is created), and members removed either by path `members[value eq "..."]` or by path
`members` with a list of `{"value": ...}`.
"""

from __future__ import annotations

import copy
from typing import Any

from admin_api.scim.errors import invalid_path, invalid_syntax, invalid_value, no_target
from admin_api.scim.filter import Compare, Logical, Node, PatchPath, matches, parse_patch_path
from admin_api.scim.schemas import ENTERPRISE, PATCH_OP

MAX_OPERATIONS = 1000
_CANONICAL = {name.lower(): name for name in (
    "userName", "name", "displayName", "active", "emails", "externalId", "groups", "members", "formatted",
    "familyName", "givenName", "value", "type", "primary", "display", "$ref", "employeeNumber", "costCenter",
    "organization", "division", "department", "manager", "nickName", "title", "locale", "timezone",
)}  # fmt: skip
_READ_ONLY = frozenset({"id", "meta", "groups", "schemas"})


def _key(container: dict[str, Any], name: str) -> str:
    for key in container:
        if key.lower() == name:
            return key
    return _CANONICAL.get(name, name)


def _container(resource: dict[str, Any], pp: PatchPath) -> dict[str, Any]:
    """The enterprise extension's object for a path written under its URN; the resource otherwise."""
    if pp.path.urn != ENTERPRISE.lower():
        return resource
    ext = resource.get(ENTERPRISE)
    if not isinstance(ext, dict):
        ext = resource[ENTERPRISE] = {}
    return ext


def _seed(node: Node) -> dict[str, Any]:
    """The attributes an `eq` filter pins down: what a new element matching it must hold."""
    if isinstance(node, Compare) and node.op == "eq" and node.path.sub is None:
        return {_CANONICAL.get(node.path.attr, node.path.attr): node.value}
    if isinstance(node, Logical) and node.op == "and":
        return {**_seed(node.left), **_seed(node.right)}
    return {}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict) and "value" in a and "value" in b:
        return bool(a["value"] == b["value"])
    return bool(a == b)


def _apply_path(resource: dict[str, Any], op: str, pp: PatchPath, value: Any, has_value: bool) -> None:
    if pp.path.attr in _READ_ONLY and pp.path.urn != ENTERPRISE.lower():
        return  # read-only attributes are ignored, as RFC 7643 §2.2 asks of a client's values
    container = _container(resource, pp)
    key = _key(container, pp.path.attr)
    if pp.filter is not None:
        items = container.get(key)
        items = items if isinstance(items, list) else []
        hits = [i for i in items if isinstance(i, dict) and matches(pp.filter, i)]
        if op == "remove":
            if pp.sub is None:
                container[key] = [i for i in items if not any(i is h for h in hits)]
            else:
                for hit in hits:
                    hit.pop(_key(hit, pp.sub), None)
            return
        if not hits:
            element = _seed(pp.filter)
            if not element:
                raise no_target(f"nothing in {key} matches the path's filter")
            items.append(element)
            container[key] = items
            hits = [element]
        for hit in hits:
            if pp.sub is not None:
                hit[_key(hit, pp.sub)] = value
            elif isinstance(value, dict):
                hit.update(value)
            else:
                raise invalid_value(f"a value for {key}[...] must be an object")
        return
    if pp.path.sub is not None:
        inner = container.get(key)
        if op == "remove":
            if isinstance(inner, dict):
                inner.pop(_key(inner, pp.path.sub), None)
            elif isinstance(inner, list):
                for i in inner:
                    if isinstance(i, dict):
                        i.pop(_key(i, pp.path.sub), None)
            return
        if not isinstance(inner, dict):
            inner = container[key] = {}
        inner[_key(inner, pp.path.sub)] = value
        return
    if op == "remove":
        current = container.get(key)
        if has_value and isinstance(current, list) and value is not None:
            drop = value if isinstance(value, list) else [value]
            container[key] = [i for i in current if not any(_same(i, d) for d in drop)]
        else:
            container.pop(key, None)
        return
    current = container.get(key)
    if op == "add" and isinstance(current, list):
        for item in value if isinstance(value, list) else [value]:
            if not any(_same(item, c) for c in current):
                current.append(item)
    elif op == "add" and isinstance(current, dict) and isinstance(value, dict):
        current.update(value)
    else:
        container[key] = value


def _apply_extension(resource: dict[str, Any], op: str, value: Any) -> None:
    if op == "remove":
        resource.pop(ENTERPRISE, None)
        return
    if not isinstance(value, dict):
        raise invalid_value(f"{ENTERPRISE} must be an object")
    current = resource.get(ENTERPRISE)
    if op == "add" and isinstance(current, dict):
        current.update(value)
    else:
        resource[ENTERPRISE] = dict(value)


def _apply_valueless(resource: dict[str, Any], op: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise invalid_value(f"an {op} without a path needs an object value")
    for name, item in value.items():
        if not isinstance(name, str):
            continue
        if name.lower() == ENTERPRISE.lower():
            _apply_extension(resource, op, item)
        else:
            _apply_path(resource, op, parse_patch_path(name), item, True)


def apply_patch(resource: dict[str, Any], body: Any) -> dict[str, Any]:
    """The resource after the PatchOp `body`; refuses a malformed body with a SCIM 400."""
    if not isinstance(body, dict):
        raise invalid_syntax("a PATCH body is a PatchOp object")
    schemas = body.get("schemas")
    if isinstance(schemas, list) and schemas and PATCH_OP not in schemas:
        raise invalid_syntax(f"a PATCH body's schemas must name {PATCH_OP}")
    ops = next((v for k, v in body.items() if k.lower() == "operations"), None)
    if not isinstance(ops, list) or not ops:
        raise invalid_syntax("a PATCH body needs a non-empty Operations list")
    if len(ops) > MAX_OPERATIONS:
        raise invalid_syntax(f"at most {MAX_OPERATIONS} operations per PATCH")
    result = copy.deepcopy(resource)
    for raw in ops:
        if not isinstance(raw, dict):
            raise invalid_syntax("each operation is an object")
        fields = {str(k).lower(): v for k, v in raw.items()}
        op = fields.get("op")
        if not isinstance(op, str) or op.lower() not in ("add", "replace", "remove"):
            raise invalid_syntax(f"unknown operation {op!r} (add, replace, remove)")
        op = op.lower()
        path = fields.get("path")
        has_value = "value" in fields
        value = fields.get("value")
        if path is None or path == "":
            if op == "remove":
                raise no_target("a remove needs a path")
            _apply_valueless(result, op, value)
            continue
        if not isinstance(path, str):
            raise invalid_path("a path is a string")
        if op != "remove" and not has_value:
            raise invalid_value(f"an {op} needs a value")
        if path.strip().lower() == ENTERPRISE.lower():  # the whole extension object
            _apply_extension(result, op, value)
            continue
        _apply_path(result, op, parse_patch_path(path), value, has_value)
    return result
