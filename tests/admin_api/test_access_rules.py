"""The role rules as properties over random trees: scopes cover subtrees, and an admin never sets the
rules of their own unit (unless it is the root), of anything above it, or of anything beside it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from admin_api.access import Access, Grants
from admin_api.auth import Caller
from admin_api.tree import UnitTree
from core.models import Unit


@st.composite
def trees(draw: st.DrawFn) -> UnitTree:
    n = draw(st.integers(min_value=1, max_value=12))
    parents = [None] + [draw(st.integers(min_value=0, max_value=i - 1)) for i in range(1, n)]
    units = [
        Unit(
            institution_id="i", id=f"u{i}", parent_id=None if p is None else f"u{p}", kind="unit", position=i
        )
        for i, p in enumerate(parents)
    ]
    return UnitTree.of(units)


@st.composite
def situations(draw: st.DrawFn) -> tuple[UnitTree, Access]:
    tree = draw(trees())
    ids = sorted(tree.units)
    grants = Grants()
    for role in ("admin", "finance", "auditor"):
        grants.scopes[role] = set(draw(st.lists(st.sampled_from(ids), max_size=3)))
    grants.memberships = draw(
        st.dictionaries(
            st.sampled_from(ids), st.sampled_from(["student", "ta", "instructor", "researcher"]), max_size=3
        )
    )
    return tree, Access(Caller("i", "me", "dev"), tree, grants)


@settings(max_examples=300)
@given(situations())
def test_admins_set_rules_strictly_below_their_units(case: tuple[UnitTree, Access]) -> None:
    tree, access = case
    admin = access.grants.scopes["admin"]
    for uid in tree.units:
        above = tree.path(uid)[1:]
        expected = any(a in admin for a in above) or (uid == tree.root and uid in admin)
        assert access.can_edit_rules(uid) == expected
        if access.can_edit_rules(uid):  # whoever sets a unit's rules sets those of everything below it
            assert all(access.can_edit_rules(d) for d in tree.subtree(uid))


@settings(max_examples=300)
@given(situations())
def test_one_admin_scope_reaches_neither_up_nor_sideways(case: tuple[UnitTree, Access]) -> None:
    tree, access = case
    access.grants.scopes = {"admin": set(list(access.grants.scopes["admin"])[:1])}
    access.grants.memberships = {}
    if not access.grants.scopes["admin"]:
        return
    [mine] = access.grants.scopes["admin"]
    inside = set(tree.subtree(mine))
    for uid in tree.units:
        if uid not in inside:  # above or beside
            assert not access.can_read_unit(uid) and not access.can_edit_rules(uid)
            assert not access.can_edit_roster(uid, {"student"}) and not access.can_read_usage(uid)
    if mine != tree.root:
        assert not access.can_edit_rules(mine)  # never their own cap
    assert access.can_edit_roster(mine, {"instructor"}) and access.can_create_under(mine)


@settings(max_examples=300)
@given(situations())
def test_finance_and_auditors_read_their_subtree_and_change_nothing(case: tuple[UnitTree, Access]) -> None:
    tree, access = case
    readers = access.grants.scopes["finance"] | access.grants.scopes["auditor"]
    access.grants.scopes = {
        "finance": access.grants.scopes["finance"],
        "auditor": access.grants.scopes["auditor"],
    }
    access.grants.memberships = {}
    for uid in tree.units:
        covered = any(a in readers for a in tree.path(uid))
        assert access.can_read_unit(uid) == covered == access.can_read_usage(uid) == access.can_export(uid)
        assert not access.can_edit_rules(uid) and not access.can_create_under(uid)
        assert not access.can_edit_roster(uid, set()) and not access.can_manage_keys(uid)
    assert not access.institution_admin


@settings(max_examples=300)
@given(situations(), st.sets(st.sampled_from(["student", "ta", "instructor", "researcher"])))
def test_instructors_manage_students_and_tas_only(case: tuple[UnitTree, Access], roles: set[str]) -> None:
    tree, access = case
    access.grants.scopes = {}
    for uid in tree.units:
        teaches = any(access.grants.memberships.get(a) == "instructor" for a in tree.path(uid))
        assert access.can_edit_roster(uid, roles) == (teaches and roles <= {"student", "ta"})
        assert access.can_manage_keys(uid) == teaches
        assert not access.can_edit_rules(uid)
