"""Course rosters: adding, changing and removing members, one at a time or from a CSV file.

A CSV import is checked whole before anything is written, like the
institution file: one bad line and nothing changes, every problem is listed
by line. Unknown users are created from the row (a registrar's export names
students who have never signed in yet); existing users' profiles are left as
SSO and the institution file set them.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import datetime
from types import EllipsisType

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_
from sqlmodel import col, select

from admin_api.access import INSTRUCTOR_MANAGED, MEMBER_ROLES
from admin_api.context import Ctx
from admin_api.errors import ApiError, forbidden, invalid
from admin_api.ids import SLUG, TEXT
from admin_api.sso import SSOConfigError, parse_sso_section
from core.models import AdminScope, ApiKey, Institution, Membership, User

ROLE_PATTERN = "^(" + "|".join(MEMBER_ROLES) + ")$"
MAX_CSV_BYTES = 2 * 1024 * 1024
MAX_CSV_ROWS = 20_000
_SLUG = re.compile(SLUG)
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,128}@[^@\s\x00-\x1f\x7f]{1,190}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Profile(BaseModel):
    """Used only when the user does not exist yet."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, pattern=_EMAIL.pattern, max_length=320)
    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=TEXT)
    sso_subject: str | None = Field(default=None, min_length=1, max_length=320, pattern=TEXT)


@dataclass
class RosterRow:
    line: int
    user_id: str
    role: str
    profile: Profile


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    users_created: list[str] = field(default_factory=list)


def parse_roster_csv(data: bytes) -> list[RosterRow]:
    """Rows of a roster CSV (header: user, role, email, name, sso_subject; `user_id` also accepted)."""
    if len(data) > MAX_CSV_BYTES:
        raise invalid("the CSV file is larger than 2 MB", code="csv_too_large")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid("the CSV file must be UTF-8", code="csv_invalid") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "user" not in fields and "user_id" not in fields:
        raise invalid("the CSV needs a header row with a 'user' column", [{"path": "line 1", "message":
                      "missing column 'user'"}], code="csv_invalid")  # fmt: skip
    reader.fieldnames = fields
    problems: list[dict[str, str]] = []
    rows: list[RosterRow] = []
    seen: dict[str, int] = {}
    try:
        records = list(reader)
    except csv.Error as exc:
        raise invalid(f"the CSV file cannot be read: {exc}", code="csv_invalid") from None
    if len(records) > MAX_CSV_ROWS:
        raise invalid(f"at most {MAX_CSV_ROWS} rows per import", code="csv_too_large")
    for i, rec in enumerate(records, start=2):
        where = f"line {i}"
        values = {k: (v or "").strip() for k, v in rec.items() if isinstance(k, str) and isinstance(v, str)}
        if any(_CONTROL.search(v) for v in values.values()):
            problems.append({"path": where, "message": "contains control characters"})
            continue
        user = values.get("user") or values.get("user_id", "")
        role = values.get("role") or "student"
        if not _SLUG.match(user):
            problems.append({"path": f"{where}.user", "message": f"not a valid user id: {user!r}"})
            continue
        if role not in MEMBER_ROLES:
            problems.append(
                {"path": f"{where}.role", "message": f"role must be one of {', '.join(MEMBER_ROLES)}"}
            )
        if user in seen:
            problems.append({"path": f"{where}.user", "message": f"{user!r} is already on line {seen[user]}"})
        seen.setdefault(user, i)
        email, name, subject = (
            values.get("email") or None,
            values.get("name") or None,
            values.get("sso_subject"),
        )
        if email is not None and (not _EMAIL.match(email) or len(email) > 320):
            problems.append({"path": f"{where}.email", "message": f"not an e-mail address: {email!r}"})
            email = None
        if name is not None and len(name) > 200:
            problems.append({"path": f"{where}.name", "message": "longer than 200 characters"})
            name = None
        if subject is not None and len(subject) > 320:
            problems.append({"path": f"{where}.sso_subject", "message": "longer than 320 characters"})
            subject = None
        rows.append(RosterRow(i, user, role, Profile(email=email, name=name, sso_subject=subject or None)))
    if problems:
        raise invalid(
            f"{len(problems)} problem(s) in the CSV; nothing was imported", problems, code="csv_invalid"
        )
    return rows


def acting_as_instructor(ctx: Ctx, unit_id: str) -> bool:
    """The caller reaches this unit only through an instructor membership, not as an admin of it."""
    return not ctx.access.scope_covers(("admin",), unit_id)


async def beyond_instructors(ctx: Ctx, user_ids: list[str]) -> list[str]:
    """Users an instructor may not put on a roster nor issue keys for: whoever holds an admin, finance or
    auditor scope, or a membership other than student or TA, anywhere in the institution. Otherwise an
    instructor could add the bursar to a course and be handed a working key in the bursar's name."""
    if not user_ids:
        return []
    inst = ctx.institution_id
    scoped = select(AdminScope.user_id).where(AdminScope.institution_id == inst,
                                              col(AdminScope.user_id).in_(user_ids))  # fmt: skip
    staff = select(Membership.user_id).where(Membership.institution_id == inst, col(Membership.user_id).in_(user_ids),
                                             col(Membership.role).not_in(INSTRUCTOR_MANAGED))  # fmt: skip
    found = set((await ctx.session.execute(scoped)).scalars()) | set(
        (await ctx.session.execute(staff)).scalars()
    )
    return sorted(found)


async def require_instructor_reach(ctx: Ctx, unit_id: str, user_ids: list[str]) -> None:
    """Refuse (403) an instructor acting on people beyond students and TAs; admins of the unit pass."""
    if not acting_as_instructor(ctx, unit_id):
        return
    beyond = await beyond_instructors(ctx, user_ids)
    if beyond:
        raise forbidden("instructors manage students and TAs only; these people hold other roles, so an "
                        "admin of the unit must do this", unit=unit_id, users=beyond)  # fmt: skip


async def _check_subjects(ctx: Ctx, subjects: list[str]) -> None:
    """A roster may bind a new user to a sign-in subject only as the institution's SSO settings would:
    never when it admits only imported users (`create_users: false`), and only within its security
    domains (`scopes`) when it has them. A bound subject is who signs in as that user."""
    inst = await ctx.session.get(Institution, ctx.institution_id)
    try:
        mapping = parse_sso_section(ctx.institution_id, inst.sso if inst else None).mapping
    except SSOConfigError:
        mapping = None
    if mapping is None or not mapping.create_users:
        raise invalid("this institution admits only the users it imports: a roster cannot bind sign-in "
                      "subjects", [{"path": "sso_subject", "message": "not allowed"}],
                      code="sso_subject_not_allowed")  # fmt: skip
    domains = {d.lower() for d in mapping.scopes}
    outside = [s for s in subjects if domains and s.rpartition("@")[2].lower() not in domains]
    if outside:
        raise invalid("sign-in subjects outside the institution's domains",
                      [{"path": "sso_subject", "message": f"{s!r} is not in {sorted(domains)}"} for s in outside],
                      code="sso_subject_not_allowed")  # fmt: skip


async def _known_subjects(ctx: Ctx, bound: dict[str, str]) -> None:
    """Refuse subjects (of new users: user id -> subject) already known to another person: another user's
    subject, e-mail or id, compared without case or surrounding blanks (IdPs pass on the case a person
    typed, and a staff member listed by e-mail signs in with it), or one subject for two new users."""
    by_key: dict[str, list[str]] = {}
    for uid, subject in bound.items():
        by_key.setdefault(subject.strip().lower(), []).append(uid)
    problems = [{"path": uids[1], "message": f"sso_subject is also given to {uids[0]!r}"}
                for uids in by_key.values() if len(uids) > 1]  # fmt: skip
    keys = list(by_key)
    stmt = select(User).where(User.institution_id == ctx.institution_id, or_(
        func.lower(func.trim(User.sso_subject)).in_(keys), func.lower(func.trim(User.email)).in_(keys),
        func.lower(User.id).in_(keys)))  # fmt: skip
    for user in (await ctx.session.execute(stmt)).scalars().all():
        for field_value in {user.sso_subject, user.email, user.id}:
            for uid in by_key.get((field_value or "").strip().lower(), ()):
                problems.append({"path": uid, "message": f"sso_subject belongs to {user.id!r}"})
    if problems:
        raise invalid(
            "some sign-in subjects are already another person's", problems, code="sso_subject_taken"
        )


async def ensure_users(ctx: Ctx, unit_id: str, wanted: dict[str, Profile]) -> list[str]:
    """Create the users that do not exist yet, for the roster of `unit_id`.

    Whoever holds a user's sign-in subject signs in as that user, so: an instructor never sets one (an
    admin of the unit or the institution file binds it, or a person signing in for the first time gets a
    user of their own); an admin binds one only as the institution's SSO settings would admit it, and
    never one already known to another person. A user created here records `source = "api"`; an existing
    one keeps the source of the path that created them (first source wins)."""
    inst = ctx.institution_id
    ids = list(wanted)
    stmt = select(User).where(User.institution_id == inst, col(User.id).in_(ids))
    existing = {u.id for u in (await ctx.session.execute(stmt)).scalars().all()}
    missing = [uid for uid in ids if uid not in existing]
    bound = {uid: str(wanted[uid].sso_subject) for uid in missing if wanted[uid].sso_subject}
    if bound:
        if acting_as_instructor(ctx, unit_id):
            raise ApiError(403, "sso_subject_not_allowed", "instructors do not bind sign-in subjects: an admin "
                           "of the unit or the institution file does",
                           {"problems": [{"path": "sso_subject", "message": "not allowed for instructors"}]})  # fmt: skip
        await _check_subjects(ctx, list(bound.values()))
        await _known_subjects(ctx, bound)
    for uid in missing:
        p = wanted[uid]
        user = User(
            institution_id=inst, id=uid, email=p.email, name=p.name, sso_subject=p.sso_subject, source="api"
        )
        ctx.session.add(user)
        ctx.audit_row("user.create", None, user, org=False)
    await ctx.session.flush()
    return missing


async def members_of(ctx: Ctx, unit_id: str) -> dict[str, Membership]:
    stmt = select(Membership).where(
        Membership.institution_id == ctx.institution_id, Membership.unit_id == unit_id
    )
    return {m.user_id: m for m in (await ctx.session.execute(stmt)).scalars().all()}


async def set_role(
    ctx: Ctx,
    unit_id: str,
    user_id: str,
    role: str,
    current: Membership | None,
    ends_at: datetime | EllipsisType | None = ...,
) -> str:
    """Add or change one membership; returns 'added', 'changed' or 'unchanged'. `ends_at`: when it ends
    (its keys stop then, plus the operator's grace), None for no end; `...` leaves it as it is."""
    if current is None:
        row = Membership(institution_id=ctx.institution_id, unit_id=unit_id, user_id=user_id, role=role,
                         source="api", ends_at=None if ends_at is ... else ends_at)  # fmt: skip
        ctx.session.add(row)
        ctx.audit_row("member.add", None, row)
        return "added"
    if current.role == role and (ends_at is ... or ends_at == current.ends_at):
        return "unchanged"
    before = current.model_copy()
    current.role = role
    if ends_at is not ...:
        current.ends_at = ends_at
    ctx.audit_row("member.update", before, current)
    return "changed"


async def remove(ctx: Ctx, member: Membership) -> None:
    """Remove a membership; its API keys go with it (the key table references the membership), so each
    is written to the audit log first."""
    stmt = select(ApiKey).where(ApiKey.institution_id == member.institution_id, ApiKey.unit_id == member.unit_id,
                                ApiKey.user_id == member.user_id)  # fmt: skip
    for key in (await ctx.session.execute(stmt)).scalars().all():
        ctx.audit_row("key.delete", key, None, org=False)
    ctx.audit_row("member.remove", member, None)
    await ctx.session.delete(member)
