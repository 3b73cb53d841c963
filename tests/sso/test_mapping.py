"""The attribute convention and its configuration, as pure functions (no IdP, no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from admin_api.sso import (
    GrantRule,
    InstitutionSSO,
    Mapping,
    SSOConfigError,
    SSOError,
    map_identity,
    parse_sso_section,
)
from admin_api.sso.config import ENTITLEMENT, EPPN, IS_MEMBER_OF, SCOPED_AFFILIATION

INST = "stateu"
DEFAULT = Mapping()
unit_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
member_roles = st.sampled_from(DEFAULT.member_roles)
admin_roles = st.sampled_from(DEFAULT.admin_roles)
other_roles = st.from_regex(r"[a-z][a-z_\-]{0,10}", fullmatch=True).filter(
    lambda r: r not in DEFAULT.member_roles and r not in DEFAULT.admin_roles
)


def identity(attrs: dict[str, list[str]], config: Mapping = DEFAULT, inst: str = INST):  # type: ignore[no-untyped-def]
    return map_identity(inst, {EPPN[0]: ["p@stateu.edu"], **attrs}, config)


@given(unit_ids, member_roles, st.sampled_from(["course", "unit"]))
def test_entitlement_of_a_member_role_is_a_membership(unit: str, role: str, kind: str) -> None:
    got = identity({ENTITLEMENT[0]: [f"urn:mace:{INST}:{kind}:{unit}:{role}"]})
    assert dict(got.memberships) == {unit: role}
    assert got.admin_scopes == frozenset()


ADMINS_ON = Mapping(allow_admin_scopes=True, scopes=["stateu.edu"])


@given(unit_ids, admin_roles)
def test_admin_roles_from_sso_are_off_by_default(unit: str, role: str) -> None:
    values = {IS_MEMBER_OF[1]: [f"unit:{unit}:{role}"],
              ENTITLEMENT[0]: [f"urn:mace:{INST}:unit:{unit}:{role}", f"urn:mace:stateu.edu:eduaiq:unit:{unit}:{role}"]}  # fmt: skip
    got = identity(values)
    assert got.admin_scopes == frozenset() and dict(got.memberships) == {}


@given(unit_ids, admin_roles)
def test_when_on_only_the_namespaced_entitlement_is_an_admin_scope(unit: str, role: str) -> None:
    got = identity({IS_MEMBER_OF[1]: [f"unit:{unit}:{role}"], ENTITLEMENT[0]: [f"urn:mace:{INST}:unit:x:{role}"]},
                   ADMINS_ON)  # fmt: skip
    assert got.admin_scopes == frozenset()
    got = identity({ENTITLEMENT[0]: [f"urn:mace:stateu.edu:eduaiq:unit:{unit}:{role}",
                                     f"urn:mace:other.edu:eduaiq:unit:{unit}x:{role}"]}, ADMINS_ON)  # fmt: skip
    assert got.admin_scopes == {(unit, role)}
    prefixed = Mapping(allow_admin_scopes=True, admin_entitlement_prefix="urn:mace:stateu.edu:ai:")
    got = identity({ENTITLEMENT[0]: [f"urn:mace:stateu.edu:ai:unit:{unit}:{role}"]}, prefixed)
    assert got.admin_scopes == {(unit, role)}


def test_admin_roles_need_a_namespace_to_be_switched_on() -> None:
    with pytest.raises(SSOConfigError) as err:
        parse_sso_section(INST, {"mapping": {"allow_admin_scopes": True}})
    assert [p for p, _ in err.value.problems] == ["sso.mapping"]


@given(unit_ids, other_roles)
def test_unknown_roles_are_ignored_not_guessed(unit: str, role: str) -> None:
    value = f"course:{unit}:{role}"
    got = identity({"groups": [value]})
    assert dict(got.memberships) == {} and got.admin_scopes == frozenset()
    assert got.ignored == (value,)


@given(unit_ids, member_roles, st.from_regex(r"[a-z0-9][a-z0-9\-]{0,12}", fullmatch=True))
def test_another_institutions_entitlements_never_match(unit: str, role: str, other: str) -> None:
    if other == INST:
        return
    got = identity({ENTITLEMENT[1]: [f"urn:mace:{other}:course:{unit}:{role}"]})
    assert dict(got.memberships) == {}


@given(unit_ids, st.lists(member_roles, min_size=1, max_size=5))
def test_the_strongest_role_wins_in_one_unit(unit: str, roles: list[str]) -> None:
    got = identity({"groups": [f"course:{unit}:{r}" for r in roles]})
    strongest = min(roles, key=DEFAULT.member_roles.index)
    assert dict(got.memberships) == {unit: strongest}


def test_subject_falls_back_to_the_protocol_subject_only_when_allowed() -> None:
    assert map_identity(INST, {}, DEFAULT, "nameid-123").subject == "nameid-123"
    with pytest.raises(SSOError) as err:
        map_identity(INST, {}, Mapping(subject_fallback=False), "nameid-123")
    assert err.value.status == 401 and err.value.code == "identity_incomplete"


def test_scopes_refuse_foreign_subjects_and_drop_foreign_affiliations() -> None:
    config = Mapping(scopes=["stateu.edu"])
    got = map_identity(INST, {EPPN[1]: ["a@StateU.edu"], SCOPED_AFFILIATION[2]: ["staff@stateu.edu",
                       "faculty@elsewhere.edu"]}, config)  # fmt: skip
    assert got.affiliations == ("staff@stateu.edu",)
    with pytest.raises(SSOError) as err:
        map_identity(INST, {EPPN[1]: ["a@elsewhere.edu"]}, config)
    assert err.value.status == 403 and err.value.code == "identity_rejected"


def test_custom_rules_fixed_units_and_renamed_roles() -> None:
    config = Mapping(rules=[
        GrantRule(attribute="affiliation", pattern="faculty", unit=INST, role="member"),
        GrantRule(attribute="groups", pattern=r"{institution}-(?P<unit>[a-z0-9]+)-(?P<role>teacher|pupil)",
                  roles={"teacher": "instructor", "pupil": "student"}),
    ])  # fmt: skip
    got = map_identity(INST, {EPPN[0]: ["x@y"], "eduPersonAffiliation": ["faculty"],
                              "groups": ["stateu-cs101-teacher", "stateu-cs102-pupil", "other-cs103-pupil"]},
                       config)  # fmt: skip
    assert dict(got.memberships) == {INST: "member", "cs101": "instructor", "cs102": "student"}


def test_admin_scopes_switched_off_are_ignored_values() -> None:
    got = identity({"groups": ["unit:cs:admin"]}, Mapping(allow_admin_scopes=False))
    assert got.admin_scopes == frozenset() and got.ignored == ("unit:cs:admin",)


def test_sso_section_problems_are_listed_by_path() -> None:
    with pytest.raises(SSOConfigError) as err:
        parse_sso_section(INST, {
            "saml": {"entity_id": "urn:x", "sso_url": "ftp://nope", "x509_cert": "MIIC" * 10, "colour": "blue"},
            "oidc": {"issuer": "https://op.example", "client_id": "c", "scopes": ["email"]},
            "mapping": {"rules": [{"attribute": "groups", "pattern": "(?P<unit>[a-z]+)"}]},
        })  # fmt: skip
    paths = {path for path, _ in err.value.problems}
    assert {"sso.saml.sso_url", "sso.saml.colour", "sso.oidc.scopes", "sso.mapping.rules[0]"} <= paths


def test_sso_section_parses_into_the_config_model() -> None:
    cfg = parse_sso_section(INST, {"cas": {"server_url": "https://cas.stateu.edu/cas"},
                                   "mapping": {"scopes": ["stateu.edu"], "create_users": False}})  # fmt: skip
    assert isinstance(cfg, InstitutionSSO)
    assert cfg.cas is not None and cfg.cas.server_url == "https://cas.stateu.edu/cas/"
    assert cfg.saml is None and cfg.mapping.create_users is False
