"""A parsed SCIM filter as a SQL condition on users or groups.

Only the attributes EduAiQ keeps in columns can be filtered (userName, externalId, emails / emails.value,
displayName, name.formatted, id, active; a group's displayName, externalId, id, members.value), with
eq, ne, co, sw, ew and pr, joined by and, or, not. Anything else is `invalidFilter` naming what was
asked. String comparisons follow RFC 7643's caseExact: externalId and id exactly, the rest without case.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true
from sqlmodel import col

from admin_api.scim.errors import invalid_filter
from admin_api.scim.filter import AttrPath, Compare, Logical, Node, Not, Present, ValuePath
from core.models import ScimGroup, ScimGroupMember, User

USER_URN = "urn:ietf:params:scim:schemas:core:2.0:user"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:group"


def _string_op(column: Any, op: str, value: Any, case_exact: bool) -> ColumnElement[bool]:
    if op == "pr":
        return and_(column.is_not(None), column != "")
    if value is None:
        if op == "eq":
            return column.is_(None)
        if op == "ne":
            return column.is_not(None)
    if not isinstance(value, str):
        raise invalid_filter(f"compare this attribute with a string, not {value!r}")
    left = column if case_exact else func.lower(column)
    right = value if case_exact else value.lower()
    if op == "eq":
        return left == right
    if op == "ne":
        return or_(column.is_(None), left != right)
    if op == "co":
        return left.contains(right, autoescape=True)
    if op == "sw":
        return left.startswith(right, autoescape=True)
    if op == "ew":
        return left.endswith(right, autoescape=True)
    raise invalid_filter(
        f"the operator {op!r} is not supported on this attribute (eq, ne, co, sw, ew, pr are)"
    )


def _check_urn(path: AttrPath, urn: str) -> None:
    if path.urn is not None and path.urn != urn:
        raise invalid_filter(f"cannot filter on {path.urn}:{path.dotted}")


def _user_leaf(path: AttrPath, op: str, value: Any) -> ColumnElement[bool]:
    _check_urn(path, USER_URN)
    name = path.dotted
    user_name = func.coalesce(col(User.sso_subject), col(User.id))
    if name == "username":
        return _string_op(user_name, op, value, case_exact=False)
    if name == "externalid":
        return _string_op(col(User.external_id), op, value, case_exact=True)
    if name == "id":
        return _string_op(col(User.id), op, value, case_exact=True)
    if name in ("emails", "emails.value"):
        return _string_op(col(User.email), op, value, case_exact=False)
    if name in ("displayname", "name.formatted"):
        return _string_op(col(User.name), op, value, case_exact=False)
    if name == "active":
        if op == "pr":
            return true()
        if op not in ("eq", "ne") or not isinstance(value, bool):
            raise invalid_filter("active is compared with eq or ne and true or false")
        is_active = col(User.deprovisioned_at).is_(None)
        return is_active if (value if op == "eq" else not value) else not_(is_active)
    raise invalid_filter(f"filtering on {path.dotted!r} is not supported")


def _group_leaf(path: AttrPath, op: str, value: Any) -> ColumnElement[bool]:
    _check_urn(path, GROUP_URN)
    name = path.dotted
    if name == "displayname":
        return _string_op(col(ScimGroup.display_name), op, value, case_exact=False)
    if name == "externalid":
        return _string_op(col(ScimGroup.external_id), op, value, case_exact=True)
    if name == "id":
        return _string_op(col(ScimGroup.id), op, value, case_exact=True)
    if name in ("members", "members.value"):
        member = select(col(ScimGroupMember.user_id)).where(
            col(ScimGroupMember.institution_id) == col(ScimGroup.institution_id),
            col(ScimGroupMember.group_id) == col(ScimGroup.id),
        )
        if op == "pr":
            return exists(member)
        if op != "eq" or not isinstance(value, str):
            raise invalid_filter("members are filtered with eq and a user id")
        return exists(member.where(col(ScimGroupMember.user_id) == value))
    raise invalid_filter(f"filtering on {path.dotted!r} is not supported")


def to_sql(node: Node, resource: str) -> ColumnElement[bool]:
    """`resource` is "User" or "Group"."""
    leaf = _user_leaf if resource == "User" else _group_leaf
    if isinstance(node, Logical):
        left, right = to_sql(node.left, resource), to_sql(node.right, resource)
        return and_(left, right) if node.op == "and" else or_(left, right)
    if isinstance(node, Not):
        return not_(to_sql(node.inner, resource))
    if isinstance(node, Present):
        return leaf(node.path, "pr", None)
    if isinstance(node, Compare):
        return leaf(node.path, node.op, node.value)
    if isinstance(node, ValuePath):
        # `emails[value eq "x"]` and `members[value eq "x"]` read as `emails.value eq "x"`.
        inner = node.filter
        if isinstance(inner, Compare) and inner.path.sub is None:
            return leaf(AttrPath(node.path.urn, node.path.attr, inner.path.attr), inner.op, inner.value)
        raise invalid_filter("only [value eq ...] style value filters are supported in a query")
    return false()
