"""The institution file's shape as pydantic models.

Ranges (percent 0..100, positive amounts, known periods) are checked here so
pydantic reports all of them at once with their locations; rules that relate
one part of the file to another live in `checks.py`. The `providers:` section
is the router's own `ProviderConfig`, so the file and the router cannot drift.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from admin_api.scim.config import ScimSection
from core.keys import hash_secret
from core.money import plain_number
from providers.config import LimitsConfig, ProviderConfig

Period = Literal["day", "week", "month", "semester", "year", "none"]
ProviderType = Literal[
    "openai-compatible", "openai", "anthropic", "gemini", "together", "vllm", "groq", "mistral", "deepseek"
]
Slug = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Semester(Strict):
    id: str = Slug
    start: date
    end: date


class Institution(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")
    name: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    timezone: str
    semesters: list[Semester] = []


class Amount(Strict):
    """One metric's rule: `fixed` or `percent`; a metric left out is inherited."""

    fixed: Decimal | None = Field(default=None, ge=0)
    percent: Decimal | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_mode(self) -> Amount:
        if (self.fixed is None) == (self.percent is None):
            raise ValueError("give exactly one of fixed or percent")
        return self


class Budget(Strict):
    period: Period | None = None
    cost: Amount | None = None
    tokens: Amount | None = None


class MemberCapAmount(Strict):
    fixed: Decimal | None = Field(default=None, ge=0)
    fair_share: Decimal | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_mode(self) -> MemberCapAmount:
        if (self.fixed is None) == (self.fair_share is None):
            raise ValueError("give exactly one of fixed or fair_share")
        return self


class MemberCap(Strict):
    cost: MemberCapAmount | None = None
    tokens: MemberCapAmount | None = None


class ExtraFunds(Strict):
    id: str = Slug
    cost: Decimal | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    valid_from: date
    valid_to: date
    chargeback: str | None = None

    @model_validator(mode="after")
    def _one_metric(self) -> ExtraFunds:
        if (self.cost is None) == (self.tokens is None):
            raise ValueError("give exactly one of cost or tokens")
        return self


class Member(Strict):
    user: str
    role: str = Field(pattern=r"^[a-z][a-z_\-]{0,31}$")
    # The last day of access (a term's end), in the institution's time zone: the keys issued for this
    # membership stop when the day ends, plus the operator's grace. Omitted: until removed from the file.
    until: date | None = None


Limits = LimitsConfig  # one definition for units, providers and models

# A flow's weight: the share of a queued model's slots its unit gets while others wait too.
WeightValue = Annotated[
    Decimal, Field(gt=0, le=1000, decimal_places=6), PlainSerializer(plain_number, when_used="json")
]
Weights = dict[str, WeightValue]


class FairShareWindow(Strict):
    """Days (local, both ends included) on which `weights` override the base weights they list."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=128)
    from_: date = Field(alias="from")
    to: date
    weights: Weights = Field(min_length=1)


class FairShare(Strict):
    """How the slots of self-hosted models are shared between units when requests queue for them.
    A key of `weights` is a unit id or a unit kind (the id wins)."""

    weights: Weights = {}
    default_weight: WeightValue = Decimal(1)
    windows: list[FairShareWindow] = []


class UnitNode(Strict):
    id: str = Slug
    kind: str = Field(pattern=r"^[a-z][a-z_\-]{0,31}$")
    name: str | None = None
    budget: Budget | None = None
    member_cap: MemberCap | None = None
    limits: Limits | None = None  # the unit's whole subtree together
    member_limits: Limits | None = None  # each member, over all their use under this unit
    models: list[str] | None = None
    default_model: str | None = None
    extras: list[ExtraFunds] = []
    members: list[Member] = []
    admins: list[str] = []
    finance: list[str] = []
    auditors: list[str] = []
    children: list[UnitNode] = []


class User(Strict):
    id: str = Slug
    email: str | None = None
    name: str | None = None
    sso_subject: str | None = None


class Key(Strict):
    """An API key the file issues to a member. `key` is the key itself; `key_sha256` is its SHA-256 (hex)
    instead, so the file (and a Kubernetes ConfigMap holding it) need not contain a working key. Give one.

    An import only adds keys: a key already in the database keeps its revocation and expiry, and a key
    that was revoked or deleted is never brought back by importing the file again."""

    user: str
    unit: str
    key: str | None = Field(default=None, min_length=20)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="after")
    def _one_form(self) -> Key:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give either key or key_sha256")
        return self

    @property
    def digest(self) -> str:
        """What the database stores for the key (core.keys.hash_secret)."""
        return self.key_sha256.lower() if self.key_sha256 else hash_secret(str(self.key))


class Roster(Strict):
    """How `eduaiq roster import` places a registrar's OneRoster classes and recognises its people
    (docs/oneroster.md). A class becomes a course unit under the unit its school maps to: the school's own
    entry in `orgs`, else its nearest mapped parent org, else `default_unit`; with none of them the import
    is refused, naming the class."""

    orgs: dict[str, str] = {}  # OneRoster org sourcedId -> unit id
    default_unit: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    # Which roster field is what the IdP asserts as the SSO subject (eduPersonPrincipalName by default), so a
    # rostered student who signs in later is the same user: `username` (with `subject_domain` appended when
    # it has no "@"), `email`, or `none` (people are matched by e-mail only and sign-in subjects are bound
    # by SSO or the file).
    sso_subject: Literal["username", "email", "none"] = "username"
    subject_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,252}$")


class OrgFile(Strict):
    institution: Institution
    providers: list[ProviderConfig] = []  # one definition of the section, shared with the router
    units: list[UnitNode] = Field(min_length=1)
    fair_share: FairShare | None = None
    users: list[User] = []
    keys: list[Key] = []
    sso: dict[str, object] = {}
    scim: ScimSection | None = None  # SCIM groups -> units and roles (docs/scim.md)
    roster: Roster | None = None
