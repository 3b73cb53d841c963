"""SCIM Users and Groups against the running server (issue 18): filters and paging, Entra ID's PATCH
quirks, errors in SCIM's shape for every bad input (never a 500), group mapping to units and roles at once
(Entra-style and Grouper-style names), SSO-granted rows handed to SCIM, the audit log, and a SCIM-made
person signing in by SSO as the same user."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from admin_api.sso.mapping import Identity
from admin_api.sso.provisioning import provision
from core.db import make_async_engine, session_factory
from core.models import AuditEntry, Membership
from tests.scim.conftest import Server

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def _ops(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(ops)}


def _new(idp: httpx.Client, user_name: str, **extra: Any) -> dict[str, Any]:
    made = idp.post("/Users", json={"schemas": [USER], "userName": user_name, **extra})
    assert made.status_code == 201, made.text
    assert made.headers["location"].endswith(f"/scim/v2/Users/{made.json()['id']}")
    return dict(made.json())


def _error(response: httpx.Response, status: int, scim_type: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    if scim_type is not None:
        assert body["scimType"] == scim_type, body


def _names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(r["userName"] for r in response.json()["Resources"])


def _memberships(server: Server, inst: str, user_id: str) -> dict[str, str]:
    me = server.browser(inst, user_id).get("/api/v1/me").json()
    return {m["unit_id"]: m["role"] for m in me["memberships"]}


def test_filters_on_user_name_external_id_emails_and_display_name_with_paging(server: Server) -> None:
    idp = server.scim(server.institutions[0])
    for i, (name, display) in enumerate([("ada@f.example", "Ada Lovelace"), ("alan@f.example", "Alan Turing"),
                                          ("grace@g.example", "Grace Hopper")]):  # fmt: skip
        _new(idp, name, externalId=f"ext-f-{i}", displayName=display,
             emails=[{"value": name.replace("@", ".mail@"), "primary": True}])  # fmt: skip
    q = lambda f: idp.get("/Users", params={"filter": f})  # noqa: E731
    assert _names(q('userName eq "ADA@f.example"')) == ["ada@f.example"]  # userName is not case-exact
    assert _names(q('userName sw "a" and userName co "@f.ex"')) == ["ada@f.example", "alan@f.example"]
    assert _names(q('externalId eq "ext-f-2" or displayName co "lovelace"')) == [
        "ada@f.example",
        "grace@g.example",
    ]
    assert _names(q('emails.value sw "alan.mail@"')) == ["alan@f.example"]
    assert _names(q('emails[value eq "grace.mail@g.example"]')) == ["grace@g.example"]
    assert _names(q('externalId eq "EXT-F-0"')) == []  # externalId is case-exact
    assert _names(q('(userName ew "f.example") and not (displayName sw "Alan")')) == ["ada@f.example"]
    page = idp.get(
        "/Users", params={"filter": 'userName co "@f.example"', "startIndex": 2, "count": 1}
    ).json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (2, 2, 1)
    assert page["Resources"][0]["userName"] == "alan@f.example"
    capped = idp.get("/Users", params={"count": 100000}).json()
    assert capped["itemsPerPage"] <= 200
    projected = idp.get(
        "/Users", params={"filter": 'userName eq "ada@f.example"', "attributes": "userName"}
    ).json()
    assert set(projected["Resources"][0]) == {"schemas", "id", "userName"}


def test_every_bad_input_is_a_scim_error_never_a_500(server: Server) -> None:
    idp = server.scim(server.institutions[0])
    user = _new(idp, "errors@f.example")
    _error(idp.post("/Users", json={"schemas": [USER], "userName": "ERRORS@f.example"}), 409, "uniqueness")
    _error(idp.post("/Users", json={"schemas": [USER]}), 400, "invalidValue")
    _error(idp.post("/Users", json={"schemas": [USER], "userName": 7}), 400, "invalidValue")
    _error(idp.post("/Users", json={"schemas": [USER], "userName": "a\u0000b"}), 400, "invalidValue")
    _error(
        idp.post("/Users", json={"schemas": [USER], "userName": "x@y", "active": "maybe"}),
        400,
        "invalidValue",
    )
    _error(idp.post("/Users", content=b"{not json", headers={"content-type": "application/scim+json"}), 400,
           "invalidSyntax")  # fmt: skip
    _error(idp.post("/Users", content=b"[" * 100_000), 400, "invalidSyntax")
    _error(idp.post("/Users", content=b" " * (300 * 1024)), 413)
    for bad in ('userName eq', 'userName xx "a"', 'password eq "x"', '(userName eq "a"', 'userName eq "a" and',
                '"' * 3000, " or ".join(['userName eq "a"'] * 100), "(" * 40 + 'userName eq "a"' + ")" * 40,
                'userName gt "a"'):  # fmt: skip
        _error(idp.get("/Users", params={"filter": bad}), 400, "invalidFilter")
    _error(idp.get("/Users", params={"count": "ten"}), 400, "invalidValue")
    _error(idp.patch(f"/Users/{user['id']}", json={"schemas": [PATCH]}), 400, "invalidSyntax")
    _error(
        idp.patch(f"/Users/{user['id']}", json=_ops({"op": "move", "path": "active"})), 400, "invalidSyntax"
    )
    _error(idp.patch(f"/Users/{user['id']}", json=_ops({"op": "remove"})), 400, "noTarget")
    _error(idp.patch(f"/Users/{user['id']}", json=_ops({"op": "add", "path": "emails[type eq", "value": 1})), 400,
           "invalidPath")  # fmt: skip
    _error(idp.get("/Users/nobody-here"), 404)
    _error(idp.get("/Users/" + "x" * 300), 404)
    _error(idp.get("/Elsewhere"), 404)
    _error(idp.delete("/ServiceProviderConfig"), 405)
    _error(
        idp.post("/Groups", json={"displayName": "g", "members": [{"value": "nobody-here"}]}),
        400,
        "invalidValue",
    )
    _error(idp.post("/Groups", json={"members": []}), 400, "invalidValue")
    assert idp.post("/Groups", json={"displayName": "Twice"}).status_code == 201
    _error(idp.post("/Groups", json={"displayName": "twice"}), 409, "uniqueness")


def test_entra_patches_active_strings_emails_extension_and_pathless_values(server: Server) -> None:
    idp = server.scim(server.institutions[0])
    user = _new(idp, "entra.person@f.example", active=True, emails=[{"value": "old@f.example", "type": "work",
                                                                      "primary": True}])  # fmt: skip
    uid = user["id"]
    done = idp.patch(f"/Users/{uid}", json=_ops(
        {"op": "Replace", "path": "active", "value": "False"},
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "new@f.example"},
        {"op": "Add", "path": f"{ENTERPRISE}:department", "value": "Physics"},
        {"op": "Replace", "value": {"displayName": "Entra Person", "name.givenName": "Entra"}},
    ))  # fmt: skip
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["active"] is False and body["displayName"] == "Entra Person"
    assert body["emails"] == [{"value": "new@f.example", "type": "work", "primary": True}]
    assert body[ENTERPRISE] == {"department": "Physics"} and body["name"] == {"givenName": "Entra"}
    assert idp.get(f"/Users/{uid}").json() == body
    back = idp.patch(f"/Users/{uid}", json=_ops({"op": "replace", "path": "active", "value": "True"}))
    assert back.json()["active"] is True
    assert _names(
        idp.get("/Users", params={"filter": 'userName eq "entra.person@f.example" and active eq true'})
    ) == ["entra.person@f.example"]


async def test_groups_map_to_units_at_once_and_take_over_sso_rows(server: Server) -> None:
    inst = server.institutions[0]
    idp = server.scim(inst)
    engine = make_async_engine(server.env["EDUAIQ_DATABASE_URL"])
    db = session_factory(engine)
    try:
        # A person who first signed in by SSO, with an SSO-granted membership of cs101.
        async with db() as session, session.begin():
            done = await provision(session, inst, Identity(subject="pat.sso@f.example", memberships={"cs101": "student", "turing-research": "researcher"}),
                                   method="oidc", create_users=True)  # fmt: skip
        uid = done.user_id
        found = idp.get("/Users", params={"filter": 'userName eq "pat.sso@f.example"'}).json()
        assert [r["id"] for r in found["Resources"]] == [uid]  # the IdP finds the person SSO made
        grouper = idp.post("/Groups", json={"displayName": "uni:courses:cs101:students", "externalId": "grouper-1",
                                            "members": [{"value": uid}]})  # fmt: skip
        assert grouper.status_code == 201, grouper.text
        async with db() as session:
            row = await session.get(Membership, (inst, "cs101", uid))
            assert row is not None and (row.role, row.source) == ("student", "scim")  # SCIM owns it now
            # ... and an SSO row no SCIM group maps is gone (SCIM is in use: the file has a scim: section).
            assert await session.get(Membership, (inst, "turing-research", uid)) is None
        staff = idp.post("/Groups", json={"displayName": "CS Staff", "members": [{"value": uid}]}).json()
        assert _memberships(server, inst, uid) == {"cs": "instructor", "cs101": "student"}
        # Renaming a group re-maps its members; an unmapped name grants nothing.
        renamed = idp.put(
            f"/Groups/{staff['id']}", json={"displayName": "CS Alumni", "members": [{"value": uid}]}
        )
        assert renamed.status_code == 200, renamed.text
        assert _memberships(server, inst, uid) == {"cs101": "student"}
        left = idp.patch(f"/Groups/{grouper.json()['id']}", json=_ops(
            {"op": "Remove", "path": "members", "value": [{"value": uid}]}))  # fmt: skip
        assert left.status_code == 200 and left.json()["members"] == []
        assert _memberships(server, inst, uid) == {}
        # Signing in by SSO again is the same person (the IdP's own groups are SSO's business).
        async with db() as session, session.begin():
            again = await provision(session, inst, Identity(subject="pat.sso@f.example"), method="oidc",
                                    create_users=True)  # fmt: skip
        assert again.user_id == uid and not again.created
        async with db() as session:
            actions = (await session.execute(
                select(AuditEntry.action).where(col(AuditEntry.institution_id) == inst,
                                                col(AuditEntry.actor).like("scim:%"),
                                                col(AuditEntry.target).contains(uid))
            )).scalars().all()  # fmt: skip
        assert {"scim.membership.update", "scim.membership.create", "scim.membership.remove"} <= set(actions)
    finally:
        await engine.dispose()


async def test_a_scim_person_signing_in_by_sso_is_the_same_user(server: Server) -> None:
    inst = server.institutions[0]
    idp = server.scim(inst)
    made = _new(idp, "new.starter@f.example", externalId="entra-oid-1")
    engine = make_async_engine(server.env["EDUAIQ_DATABASE_URL"])
    try:
        async with session_factory(engine)() as session, session.begin():
            signed_in = await provision(session, inst, Identity(subject="new.starter@f.example"), method="saml",
                                        create_users=True)  # fmt: skip
        assert signed_in.user_id == made["id"] and not signed_in.created
    finally:
        await engine.dispose()
    # Deleted: 404 to the IdP, the row kept; provisioning the same userName again brings the same user back.
    assert idp.delete(f"/Users/{made['id']}").status_code == 204
    _error(idp.get(f"/Users/{made['id']}"), 404)
    _error(idp.delete(f"/Users/{made['id']}"), 404)
    again = idp.post("/Users", json={"schemas": [USER], "userName": "new.starter@f.example", "active": True})
    assert again.status_code == 201 and again.json()["id"] == made["id"] and again.json()["active"] is True


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_random_bodies_never_cause_a_500(server: Server, method: str) -> None:
    idp = server.scim(server.institutions[0])
    uid = _new(idp, f"fuzz.{method.lower()}@f.example")["id"]
    gid = idp.post("/Groups", json={"displayName": f"fuzz {method}"}).json()["id"]
    bodies: list[Any] = [None, 1, "x", [], {}, {"Operations": {}}, {"Operations": [None]},
                         {"Operations": [{"op": "add", "path": 5, "value": 1}]},
                         {"Operations": [{"op": "add", "path": "members", "value": "x"}]},
                         {"Operations": [{"op": "replace", "path": "emails", "value": [1, 2]}]},
                         {"Operations": [{"op": "replace", "path": "name", "value": "flat"}]},
                         {"Operations": [{"op": "add", "value": [1]}]},
                         {"userName": {"a": 1}}, {"userName": "u", "emails": "x"}, {"userName": "u", "name": []},
                         {"userName": "u", ENTERPRISE: {"manager": 3}}, {"displayName": ["x"]},
                         {"displayName": "d", "members": [{"value": None}]}]  # fmt: skip
    for body in bodies:
        for path in (f"/Users/{uid}", f"/Groups/{gid}") if method != "POST" else ("/Users", "/Groups"):
            response = idp.request(method, path, content=json.dumps(body))
            assert response.status_code < 500, (method, path, body, response.text)
            if response.status_code >= 400:
                assert response.json()["schemas"] == [ERROR]


def test_changing_the_files_scim_section_remaps_everyone_in_groups_and_exports(server: Server) -> None:
    inst = server.institutions[1]
    idp = server.scim(inst)
    uid = _new(idp, "remapped@f.example")["id"]
    assert (
        idp.post("/Groups", json={"displayName": "Research crew", "members": [{"value": uid}]}).status_code
        == 201
    )
    assert _memberships(server, inst, uid) == {}

    def research(doc: dict[str, Any]) -> None:
        doc["scim"] = {
            "groups": [{"display_name": "Research crew", "unit": "turing-research", "role": "researcher"}]
        }

    imported = server.cli("org", "import", str(server.write_org(inst, research)))
    assert imported.returncode == 0, imported.stderr
    assert _memberships(server, inst, uid) == {"turing-research": "researcher"}
    exported = server.cli("org", "export", "--institution", inst)
    assert exported.returncode == 0 and "Research crew" in exported.stdout, exported.stderr
    restored = server.cli("org", "import", str(server.write_org(inst)))  # back to the module's section
    assert restored.returncode == 0, restored.stderr
    assert _memberships(server, inst, uid) == {}


def test_an_erased_person_cannot_be_changed_or_reinstated_by_scim(server: Server) -> None:
    inst = server.institutions[1]
    idp = server.scim(inst)
    made = _new(
        idp, "forget.me@f.example", displayName="Forget Me", emails=[{"value": "forget.me@f.example"}]
    )
    off = idp.patch(f"/Users/{made['id']}", json=_ops({"op": "replace", "path": "active", "value": False}))
    assert off.status_code == 200, off.text
    erased = server.cli("user", "erase", "--institution", inst, made["id"])
    assert erased.returncode == 0, erased.stderr
    shown = idp.get(f"/Users/{made['id']}").json()
    assert "Forget Me" not in json.dumps(shown) and "forget.me@f.example" not in json.dumps(
        shown.get("emails")
    )
    _error(idp.patch(f"/Users/{made['id']}", json=_ops({"op": "replace", "path": "active", "value": True})), 400,
           "mutability")  # fmt: skip
    _error(idp.put(f"/Users/{made['id']}", json={"schemas": [USER], "userName": "x@f.example", "active": True}),
           400, "mutability")  # fmt: skip


def test_a_membership_change_is_published_to_quota_and_the_gateways(server: Server) -> None:
    import time

    import redis

    from core.channels import CATALOG_CHANNEL

    inst = server.institutions[1]
    idp = server.scim(inst)
    uid = _new(idp, "published@f.example")["id"]
    client = redis.Redis.from_url(server.env["EDUAIQ_REDIS_URL"], decode_responses=True)
    pubsub = client.pubsub()
    pubsub.subscribe(CATALOG_CHANNEL)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        assert (
            idp.post("/Groups", json={"displayName": "Unmapped", "members": [{"value": uid}]}).status_code
            == 201
        )
        time.sleep(0.5)
        assert pubsub.get_message(timeout=0.5) is None  # nothing changed, nothing published
        made = idp.post("/Groups", json={"displayName": "CS Staff", "members": [{"value": uid}]})
        assert made.status_code == 201, made.text
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == inst
    finally:
        pubsub.close()
        client.close()
