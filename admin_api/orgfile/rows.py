"""The institution file as the database rows it stands for."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import SQLModel

from admin_api.orgfile.schema import FairShare, Key, OrgFile, UnitNode
from core.models import (
    AdminScope,
    ApiKey,
    BudgetRule,
    Extra,
    Institution,
    Membership,
    ModelOffer,
    Provider,
    RosterSettings,
    Unit,
    User,
)
from core.models.access import USER_PERSONAL_FIELDS
from core.money import to_micro
from providers.config import ProviderConfig, compile_deployments

SCOPE_FIELDS = {"admins": "admin", "finance": "finance", "auditors": "auditor"}
# A person's provenance: set by whichever path created them, never by a later import (`comparable`).
USER_PROVENANCE_FIELDS = ("source", "external_id")


@dataclass
class Desired:
    """Rows per table, in an order that satisfies foreign keys when inserted."""

    tables: dict[type[SQLModel], list[SQLModel]] = field(default_factory=dict)

    def add(self, row: SQLModel) -> None:
        self.tables.setdefault(type(row), []).append(row)


def _metric_amount(metric: str, value: Decimal) -> int:
    return to_micro(value) if metric == "cost" else int(value)


def imported_key_id(key: Key) -> str:
    """Deterministic, so importing the same key twice is one row, not two (ids of keys given as themselves
    are what they always were; a key given by its SHA-256 gets an id from that)."""
    seed = "key-id:" + key.key if key.key is not None else "key-id-sha256:" + key.digest
    return "org-" + hashlib.sha256(seed.encode()).hexdigest()[:12]


def imported_key_prefix(key: Key) -> str:
    """Shown in key lists; a key given by its hash has no characters of its own to show."""
    return key.key[:12] if key.key is not None else "sha256:" + key.digest[:8]


def desired_rows(org: OrgFile) -> Desired:
    inst_id = org.institution.id
    out = Desired()
    out.add(
        Institution(
            id=inst_id,
            name=org.institution.name,
            currency=org.institution.currency,
            timezone=org.institution.timezone,
            semesters=[s.model_dump(mode="json") for s in org.institution.semesters],
            sso=dict(org.sso),
            fair_share=fair_share_doc(org.fair_share),
        )
    )
    if org.roster is not None:
        roster = org.roster.model_dump(mode="json", exclude_defaults=True)
        out.add(RosterSettings(institution_id=inst_id, config=roster))
    for row in provider_rows(inst_id, org.providers, org.institution.currency):
        out.add(row)
    for user in org.users:
        out.add(
            User(
                institution_id=inst_id,
                id=user.id,
                email=user.email,
                name=user.name,
                sso_subject=user.sso_subject,
                source="file",
            )
        )
    for root in org.units:
        _add_unit(out, inst_id, root, None, 0, ZoneInfo(org.institution.timezone))
    for key in org.keys:
        out.add(ApiKey(id=imported_key_id(key), key_hash=key.digest, prefix=imported_key_prefix(key), institution_id=inst_id,
                       user_id=key.user, unit_id=key.unit, name="institution file", created_by="org-file"))  # fmt: skip
    return out


_PROVIDER_COLUMNS = {"id", "type", "base_url", "api_key_env", "models"}
_MODEL_COLUMNS = {"id", "upstream", "vision", "max_output_tokens", "price"}


def provider_rows(inst: str, providers: list[ProviderConfig], currency: str) -> list[SQLModel]:
    """Provider and model rows; prices resolved now (contract, else the bundled default) so the hot path
    and the ledger never depend on a price map that may change under them."""
    deployments = {(d.provider_id, d.model_id): d for d in compile_deployments(providers, currency=currency)}
    out: list[SQLModel] = []
    for pos, prov in enumerate(providers):
        options = prov.model_dump(mode="json", exclude=_PROVIDER_COLUMNS, exclude_defaults=True)
        out.append(Provider(institution_id=inst, id=prov.id, type=prov.type, base_url=prov.base_url or "",
                            api_key_env=prov.api_key_env, position=pos, options=options))  # fmt: skip
    for pos, prov in enumerate(providers):
        for mpos, model in enumerate(prov.models):
            price = deployments[(prov.id, model.id)].price
            out.append(
                ModelOffer(
                    institution_id=inst, provider_id=prov.id, id=model.id, upstream=model.upstream_name,
                    vision=model.vision, max_output_tokens=model.max_output_tokens or 4096,
                    input_price=price.input_per_mtok, output_price=price.output_per_mtok,
                    cached_input_price=price.cached_input_per_mtok,
                    price_source="contract" if model.price is not None else "default",
                    position=pos * 1000 + mpos,
                    options=model.model_dump(mode="json", exclude=_MODEL_COLUMNS, exclude_defaults=True),
                )
            )  # fmt: skip
    return out


def fair_share_doc(fair: FairShare | None) -> dict[str, Any]:
    """The `fair_share:` section as stored (and exported): the file's field names, plain numbers."""
    if fair is None:
        return {}
    return fair.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def unit_limits_doc(node: UnitNode) -> dict[str, Any] | None:
    """`Unit.limits`: {"limits": {...}, "member_limits": {...}} with the fields the file gave, or None."""
    doc = {
        name: value.model_dump(mode="json", exclude_none=True)
        for name in ("limits", "member_limits")
        if (value := getattr(node, name)) is not None
    }
    return doc or None


def _add_unit(
    out: Desired, inst: str, node: UnitNode, parent: str | None, position: int, tz: ZoneInfo
) -> None:
    budget = node.budget
    out.add(
        Unit(institution_id=inst, id=node.id, parent_id=parent, kind=node.kind, name=node.name,
             period=budget.period if budget else None, models=node.models, default_model=node.default_model,
             limits=unit_limits_doc(node), archived=False, position=position)
    )  # fmt: skip
    for metric in ("cost", "tokens"):
        rule = getattr(budget, metric) if budget else None
        if rule is not None:
            if rule.fixed is not None:
                out.add(BudgetRule(institution_id=inst, unit_id=node.id, metric=metric, scope="unit", mode="fixed",
                                   amount=_metric_amount(metric, rule.fixed)))  # fmt: skip
            else:
                out.add(BudgetRule(institution_id=inst, unit_id=node.id, metric=metric, scope="unit", mode="percent",
                                   ratio=rule.percent))  # fmt: skip
        cap = getattr(node.member_cap, metric) if node.member_cap else None
        if cap is not None:
            if cap.fixed is not None:
                out.add(BudgetRule(institution_id=inst, unit_id=node.id, metric=metric, scope="member", mode="fixed",
                                   amount=_metric_amount(metric, cap.fixed)))  # fmt: skip
            else:
                out.add(BudgetRule(institution_id=inst, unit_id=node.id, metric=metric, scope="member",
                                   mode="fair_share", ratio=cap.fair_share))  # fmt: skip
    for extra in node.extras:
        metric = "cost" if extra.cost is not None else "tokens"
        amount = to_micro(extra.cost) if extra.cost is not None else int(extra.tokens or 0)
        out.add(Extra(institution_id=inst, id=extra.id, unit_id=node.id, metric=metric, amount=amount,
                      valid_from=extra.valid_from, valid_to=extra.valid_to, chargeback=extra.chargeback))  # fmt: skip
    for member in node.members:
        out.add(
            Membership(
                institution_id=inst,
                unit_id=node.id,
                user_id=member.user,
                role=member.role,
                source="file",
                ends_at=membership_end(member.until, tz),
            )
        )
    for field_name, role in SCOPE_FIELDS.items():
        for uid in getattr(node, field_name):
            out.add(AdminScope(institution_id=inst, unit_id=node.id, user_id=uid, role=role, source="file"))
    for pos, child in enumerate(node.children):
        _add_unit(out, inst, child, node.id, pos, tz)


def membership_end(until: date | None, tz: ZoneInfo) -> datetime | None:
    """`until` is the last day of access, in the institution's time zone: the membership ends as it closes."""
    if until is None:
        return None
    return datetime.combine(until + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)


def comparable(row: SQLModel) -> dict[str, Any]:
    """Column values that matter for "did it change" (timestamps are bookkeeping, not content; whether a
    person was deprovisioned or erased is not the file's to say: an import must never bring a leaver back,
    nor an erased person's name, e-mail or SSO subject: `without_erased`; nor where they came from)."""
    values = row.model_dump()
    for name in ("created_at", "updated_at", "deprovisioned_at", "erased_at"):
        values.pop(name, None)
    if isinstance(row, User):
        # Where a person came from is written once, by the path that created them (first source wins): a
        # file that later names someone SCIM, SSO or the API created does not claim them, and a row older
        # than provenance keeps its unknown source rather than being credited to the file. The id another
        # source knows them by (`external_id`) is that source's to keep.
        for name in USER_PROVENANCE_FIELDS:
            values.pop(name, None)
    return {k: (Decimal(v) if isinstance(v, Decimal) else v) for k, v in values.items()}


def without_erased(current: SQLModel, values: dict[str, Any]) -> dict[str, Any]:
    """`values` less what an import may not write to `current`: an erased person's personal fields (the
    file that still names them is older than the erasure)."""
    if isinstance(current, User) and current.erased_at is not None:
        return {k: v for k, v in values.items() if k not in USER_PERSONAL_FIELDS}
    return values
