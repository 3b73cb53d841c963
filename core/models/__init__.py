"""The database schema: one place for every table, so Alembic sees them all.

Tables are grouped by what they hold: the institution's organisation (`org`),
access (`access`), the model catalogue (`catalog`), the usage ledger
(`ledger`) and the audit trail (`audit`). Every row carries `institution_id`
because one deployment may host several institutions and all their ids
(unit ids, user ids) are only unique within one.
"""

from sqlmodel import SQLModel

from core.models.access import AdminScope, ApiKey, Membership, PersonalAccessToken, User
from core.models.audit import AuditEntry
from core.models.catalog import ModelOffer, Provider
from core.models.ledger import ExportSnapshot, UsageEvent, UsageRollup
from core.models.org import BudgetRule, Extra, Institution, Unit
from core.models.roster import RosterRecord, RosterSettings
from core.models.scim import ScimGroup, ScimGroupMember, ScimSettings, ScimToken, ScimUser

metadata = SQLModel.metadata

__all__ = [
    "AdminScope",
    "ApiKey",
    "AuditEntry",
    "BudgetRule",
    "ExportSnapshot",
    "Extra",
    "Institution",
    "Membership",
    "ModelOffer",
    "PersonalAccessToken",
    "Provider",
    "RosterRecord",
    "RosterSettings",
    "ScimGroup",
    "ScimGroupMember",
    "ScimSettings",
    "ScimToken",
    "ScimUser",
    "Unit",
    "UsageEvent",
    "UsageRollup",
    "User",
    "metadata",
]
