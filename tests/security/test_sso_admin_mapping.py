"""Issue 17 item 6: an identity provider's group names cannot make someone an admin, let alone the root's.

A real OpenID provider (npm oidc-provider, as in tests/sso) signs people in whose `groups` claim and
entitlements name admin roles. By default no admin role comes from sign-in at all; switched on, only an
entitlement in the institution's own namespace (`<prefix>unit:<unit-id>:<role>`) counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.sso import Mapping, SSOConfigError, StaticRegistry, parse_sso_section
from tests.sso import browse
from tests.sso.conftest import (  # noqa: F401  (fixtures: the SP app and a real OIDC provider)
    OidcSetup,
    app,
    browser,
    db,
    oidc_op,
    query,
    redis_client,
    registry,
    sso_workdir,
    subject,
)
from tests.sso.support import SP

PREFIX = "urn:mace:stateu.edu:eduaiq:"


async def sign_in(client: httpx.AsyncClient, op: OidcSetup, who: str, claims: dict[str, object]) -> None:
    op.op.add_account(who, {"email": f"m-{who}", "email_verified": True, "name": "Mallory",
                            "eduperson_principal_name": who, **claims})  # fmt: skip
    resp = await client.get(await browse.oidc_callback_url(client, op.institution, who))
    assert resp.status_code == 303, resp.text


async def admin_scopes(
    sessions: async_sessionmaker[AsyncSession], inst: str, who: str
) -> list[tuple[str, str]]:
    rows = await query(sessions, "select s.unit_id, s.role from admin_scope s join app_user u on u.institution_id "
                       "= s.institution_id and u.id = s.user_id where s.institution_id = :i and u.sso_subject = :s "
                       "order by 1, 2", i=inst, s=who)  # fmt: skip
    return [(str(u), str(r)) for u, r in rows]


async def test_group_names_grant_no_admin_role_by_default(
    browser: httpx.AsyncClient,  # noqa: F811
    oidc_op: OidcSetup,  # noqa: F811
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    subject: str,  # noqa: F811
) -> None:
    inst = oidc_op.institution
    await sign_in(browser, oidc_op, subject, {
        "groups": [f"unit:{inst}:admin", "unit:cs:finance", "course:cs101:student"],
        "eduperson_entitlement": [f"urn:mace:{inst}:unit:{inst}:admin", f"{PREFIX}unit:{inst}:admin"],
    })  # fmt: skip
    assert await admin_scopes(db, inst, subject) == []
    who = (await browser.get(f"{SP}/auth/session")).json()
    assert who["admin_scopes"] == []
    assert [(m["unit_id"], m["role"]) for m in who["memberships"]] == [("cs101", "student")]


@pytest.fixture
def admins_from_sso(registry: StaticRegistry, oidc_op: OidcSetup) -> Iterator[None]:  # noqa: F811
    """The institution switches admin roles from sign-in on, with its entitlement namespace."""
    inst = oidc_op.institution
    before = registry._configs[inst]
    mapping = Mapping(allow_admin_scopes=True, admin_entitlement_prefix=PREFIX)
    registry.put(before.model_copy(update={"mapping": mapping}))
    try:
        yield
    finally:
        registry.put(before)


async def test_when_switched_on_only_namespaced_entitlements_count(
    admins_from_sso: None,
    browser: httpx.AsyncClient,  # noqa: F811
    oidc_op: OidcSetup,  # noqa: F811
    db: async_sessionmaker[AsyncSession],  # noqa: F811
    subject: str,  # noqa: F811
) -> None:
    inst = oidc_op.institution
    await sign_in(browser, oidc_op, subject, {
        "groups": [f"unit:{inst}:admin", "unit:math:admin"],
        "eduperson_entitlement": [f"urn:mace:{inst}:unit:{inst}:admin", f"{PREFIX}unit:cs:finance",
                                  f"urn:mace:other.edu:eduaiq:unit:{inst}:admin"],
    })  # fmt: skip
    assert await admin_scopes(db, inst, subject) == [("cs", "finance")]


def test_switching_admin_roles_on_needs_a_namespace() -> None:
    with pytest.raises(SSOConfigError):
        parse_sso_section("stateu", {"mapping": {"allow_admin_scopes": True}})
    assert parse_sso_section("stateu", {"mapping": {"allow_admin_scopes": True, "scopes": ["stateu.edu"]}})
    assert parse_sso_section("stateu", {}).mapping.allow_admin_scopes is False
