"""Per-institution identity-provider settings: the shape of the institution file's `sso:` section.

An institution may offer any of SAML, OIDC and CAS; all three feed the same
attribute mapping (`Mapping`), so a user lands in the same units whichever way
they sign in. Secrets (an OIDC client secret, an SP signing key) are never in
the file: the file names the environment variable that holds them, as it does
for provider API keys, and only variables the operator declared for the
institution's sign-in may be named (sso_secrets.py); they are read through
`sso_secrets.read`, never straight from the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from admin_api.sso.sso_secrets import declared_from, section_problems
from core.declared import SecretVar
from core.settings import get_settings

URL = r"^https?://\S+$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
UNIT_ID = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
ROLE = r"[a-z][a-z_\-]{0,31}"

# eduPerson (and REFEDS OIDC claim) names for each thing the mapping reads. SAML IdPs send the
# urn:oid names with a FriendlyName; both are looked up, then the OIDC and CAS spellings.
EPPN = ["urn:oid:1.3.6.1.4.1.5923.1.1.1.6", "eduPersonPrincipalName", "eduperson_principal_name"]
MAIL = ["urn:oid:0.9.2342.19200300.100.1.3", "mail", "email"]
DISPLAY_NAME = ["urn:oid:2.16.840.1.113730.3.1.241", "displayName", "name", "cn"]
AFFILIATION = ["urn:oid:1.3.6.1.4.1.5923.1.1.1.1", "eduPersonAffiliation", "eduperson_affiliation"]
SCOPED_AFFILIATION = [
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.9",
    "eduPersonScopedAffiliation",
    "eduperson_scoped_affiliation",
]
ENTITLEMENT = ["urn:oid:1.3.6.1.4.1.5923.1.1.1.7", "eduPersonEntitlement", "eduperson_entitlement"]
IS_MEMBER_OF = ["urn:oid:1.3.6.1.4.1.5923.1.5.1.1", "isMemberOf", "is_member_of", "groups", "memberOf"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamlIdP(Strict):
    entity_id: str = Field(min_length=1)
    sso_url: str = Field(pattern=URL)
    slo_url: str | None = Field(default=None, pattern=URL)
    # The IdP's signing certificate (PEM or bare base64). `x509_cert_next` is accepted as well
    # during a key rollover, so the IdP can switch keys without a coordinated deploy.
    x509_cert: str = Field(min_length=20)
    x509_cert_next: str | None = None
    name_id_format: str = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
    # Default: <public_base_url>/auth/saml/<institution>/metadata (what the IdP registers as audience).
    sp_entity_id: str | None = None
    # Optional SP key pair: signs AuthnRequests and logout messages when present.
    sp_cert: str | None = None
    sp_private_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    want_response_signed: bool = False  # the assertion must always be signed; this adds the envelope

    @model_validator(mode="after")
    def _key_pair(self) -> SamlIdP:
        if bool(self.sp_cert) != bool(self.sp_private_key_env):
            raise ValueError("give both sp_cert and sp_private_key_env, or neither")
        return self


class OidcProvider(Strict):
    issuer: str = Field(pattern=URL)
    client_id: str = Field(min_length=1)
    # Name of the environment variable holding the client secret; absent = public client (PKCE only).
    client_secret_env: str | None = Field(default=None, pattern=ENV_NAME)
    scopes: list[str] = ["openid", "email", "profile"]
    use_userinfo: bool = True

    @field_validator("scopes")
    @classmethod
    def _openid(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError("must include openid")
        return v


class CasServer(Strict):
    server_url: str = Field(pattern=URL)  # the CAS base, e.g. https://cas.stateu.edu/cas/

    @field_validator("server_url")
    @classmethod
    def _slash(cls, v: str) -> str:
        # python-cas joins "login" and "p3/serviceValidate" onto it: without the slash they replace "cas".
        return v if v.endswith("/") else v + "/"


AttributeKind = Literal["entitlement", "groups", "affiliation", "scoped_affiliation"]


class GrantRule(Strict):
    """One regular expression over the values of one attribute, each full match granting a role in a unit.

    The pattern may contain `{institution}` (replaced by the escaped institution id) and the named
    groups `unit` and `role`; a rule without one of those groups names it with `unit:` / `role:`.
    `roles` renames captured roles (e.g. {"teacher": "instructor"}).
    """

    attribute: AttributeKind
    pattern: str = Field(min_length=1)
    unit: str | None = Field(default=None, pattern=f"^{UNIT_ID}$")
    role: str | None = Field(default=None, pattern=f"^{ROLE}$")
    roles: dict[str, str] = {}

    def compiled(self, institution_id: str) -> re.Pattern[str]:
        return re.compile(self.pattern.replace("{institution}", re.escape(institution_id)))

    @model_validator(mode="after")
    def _complete(self) -> GrantRule:
        try:
            groups = self.compiled("x").groupindex
        except re.error as exc:
            raise ValueError(f"pattern is not a regular expression: {exc}") from None
        if "unit" not in groups and self.unit is None:
            raise ValueError("pattern needs a (?P<unit>...) group, or give unit")
        if "role" not in groups and self.role is None:
            raise ValueError("pattern needs a (?P<role>...) group, or give role")
        return self


DEFAULT_RULES = [
    # eduPersonEntitlement  urn:mace:<institution>:course:<unit-id>:<role>  (also ...:unit:...)
    GrantRule(
        attribute="entitlement",
        pattern=rf"urn:mace:{{institution}}:(?:course|unit):(?P<unit>{UNIT_ID}):(?P<role>{ROLE})",
    ),
    # isMemberOf / groups  course:<unit-id>:<role>  (also unit:...)
    GrantRule(attribute="groups", pattern=rf"(?:course|unit):(?P<unit>{UNIT_ID}):(?P<role>{ROLE})"),
]


class AttributeNames(Strict):
    """Which incoming attribute (SAML name or friendly name, OIDC claim, CAS attribute) feeds what."""

    subject: list[str] = EPPN
    email: list[str] = MAIL
    name: list[str] = DISPLAY_NAME
    affiliation: list[str] = AFFILIATION
    scoped_affiliation: list[str] = SCOPED_AFFILIATION
    entitlement: list[str] = ENTITLEMENT
    groups: list[str] = IS_MEMBER_OF


class Mapping(Strict):
    attributes: AttributeNames = AttributeNames()
    rules: list[GrantRule] = DEFAULT_RULES
    # Roles a membership may have, strongest first: one unit gets one role, the first listed wins.
    member_roles: list[str] = ["instructor", "ta", "researcher", "student", "member"]
    # Roles that become admin scopes (over the unit and everything below it) instead of memberships.
    admin_roles: list[str] = ["admin", "finance", "auditor"]
    # Security domains (the part after @) accepted in eduPersonPrincipalName and scoped affiliations;
    # empty = any. A subject outside them is refused; scoped affiliations outside them are dropped.
    scopes: list[str] = []
    # With no subject attribute, fall back to the protocol's own subject (SAML NameID unless
    # transient, OIDC sub, CAS user).
    subject_fallback: bool = True
    # Create a user on first sign-in; off = only users already in the institution file may sign in.
    create_users: bool = True
    # Admin roles (admin, finance, auditor) from the IdP. Off by default: a group name is often editable
    # by people who should not become admins (self-service groups, another institution's IdP in a
    # federation). When on, only eduPersonEntitlement values under the institution's own namespace count:
    # `<prefix>unit:<unit-id>:<role>`, the prefix being `admin_entitlement_prefix`, or else
    # `urn:mace:<domain>:eduaiq:` for each security domain in `scopes`. Admin roles matched any other way
    # (groups, isMemberOf, affiliations, other entitlements) are ignored.
    allow_admin_scopes: bool = False
    admin_entitlement_prefix: str | None = Field(default=None, pattern=r"^urn:[A-Za-z0-9][^\s]*:$")

    @model_validator(mode="after")
    def _disjoint(self) -> Mapping:
        both = set(self.member_roles) & set(self.admin_roles)
        if both:
            raise ValueError(f"roles both member and admin: {sorted(both)}")
        return self

    @model_validator(mode="after")
    def _namespaced_admins(self) -> Mapping:
        if self.allow_admin_scopes and not self.admin_prefixes():
            raise ValueError(
                "allow_admin_scopes needs the institution's entitlement namespace: admin_entitlement_prefix "
                "(e.g. urn:mace:stateu.edu:eduaiq:) or scopes (security domains)"
            )
        return self

    def admin_prefixes(self) -> tuple[str, ...]:
        """Entitlement prefixes under which the IdP may grant admin roles (empty: it may not)."""
        if self.admin_entitlement_prefix:
            return (self.admin_entitlement_prefix,)
        return tuple(f"urn:mace:{domain.lower()}:eduaiq:" for domain in self.scopes)


class InstitutionSSO(Strict):
    institution_id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")
    saml: SamlIdP | None = None
    oidc: OidcProvider | None = None
    cas: CasServer | None = None
    mapping: Mapping = Mapping()


class SSOConfigError(Exception):
    """An `sso:` section refused whole; `problems` are (path in the file, message) like the importer's."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p}: {m}" for p, m in problems))


def _path(loc: tuple[int | str, ...]) -> str:
    out = "sso"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_sso_section(
    institution_id: str, section: MappingABC[str, Any] | None, secret_vars: Sequence[SecretVar] | None = None
) -> InstitutionSSO:
    """Check the file's `sso:` mapping; raise `SSOConfigError` listing every problem by its path.

    `secret_vars`: the operator's EDUAIQ_SSO_SECRET_VARS entries, which the secret variables the section
    names must be declared in for this institution; None reads them from the process's settings, so no
    caller can skip the check by not having them at hand."""
    data = dict(section or {})
    if "institution_id" in data:
        raise SSOConfigError([("sso.institution_id", "unknown field (the institution is the file's)")])
    try:
        cfg = InstitutionSSO.model_validate({**data, "institution_id": institution_id})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = "unknown field" if err["type"] == "extra_forbidden" else str(err["msg"])
            problems.append((_path(err["loc"]), msg.removeprefix("Value error, ")))
        raise SSOConfigError(problems) from None
    declared = declared_from(get_settings()) if secret_vars is None else secret_vars
    refused = section_problems(cfg, declared)
    if refused:
        raise SSOConfigError(refused)
    return cfg
