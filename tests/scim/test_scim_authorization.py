"""Who may use /scim/v2 (issue 18): only an institution's own SCIM token, and only for that institution's
people and groups. Another institution's token gets 404 for every id and an empty list for every filter
(never the other's data); a revoked token, no token, an admin's session, a personal access token and an
API key get 401; and groups grant an admin role only where the institution file maps one.
"""

from __future__ import annotations

import re

import httpx

from tests.scim.conftest import Server

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def _user(idp: httpx.Client, user_name: str) -> str:
    made = idp.post("/Users", json={"schemas": [USER], "userName": user_name, "displayName": "B Person"})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def _scim_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status) and body["detail"]


def test_a_token_of_institution_a_never_reaches_institution_b(server: Server) -> None:
    a, b = server.institutions
    idp_a, idp_b = server.scim(a), server.scim(b)
    b_user = _user(idp_b, "only.in.b@b.example")
    b_group = idp_b.post("/Groups", json={"displayName": "B staff", "members": [{"value": b_user}]}).json()[
        "id"
    ]
    before_user, before_group = idp_b.get(f"/Users/{b_user}").json(), idp_b.get(f"/Groups/{b_group}").json()

    listed = idp_a.get("/Users", params={"filter": 'userName eq "only.in.b@b.example"'})
    assert listed.status_code == 200 and listed.json()["totalResults"] == 0
    everyone = idp_a.get("/Users", params={"count": 200}).json()["Resources"]
    assert b_user not in {u["id"] for u in everyone}
    assert idp_a.get("/Groups", params={"filter": 'displayName eq "B staff"'}).json()["totalResults"] == 0
    searched = idp_a.post("/Users/.search", json={"filter": 'userName sw "only.in.b"'})
    assert searched.status_code == 200 and searched.json()["totalResults"] == 0
    replace = {"schemas": [USER], "userName": "taken.over@a.example", "active": False}
    op = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": False}]}
    for response in (
        idp_a.get(f"/Users/{b_user}"),
        idp_a.put(f"/Users/{b_user}", json=replace),
        idp_a.patch(f"/Users/{b_user}", json=op),
        idp_a.delete(f"/Users/{b_user}"),
        idp_a.get(f"/Groups/{b_group}"),
        idp_a.put(f"/Groups/{b_group}", json={"displayName": "Mine now", "members": []}),
        idp_a.patch(
            f"/Groups/{b_group}",
            json={"schemas": [PATCH], "Operations": [{"op": "remove", "path": "members"}]},
        ),
        idp_a.delete(f"/Groups/{b_group}"),
    ):
        _scim_error(response, 404)
        assert (
            "B Person" not in response.text and "B staff" not in response.text
        )  # (the id echoed is the caller's)
    # Nor can A's groups take B's people in.
    _scim_error(idp_a.post("/Groups", json={"displayName": "A grabs B", "members": [{"value": b_user}]}), 400)
    assert idp_b.get(f"/Users/{b_user}").json() == before_user
    assert idp_b.get(f"/Groups/{b_group}").json() == before_group


def test_no_token_a_revoked_token_and_other_credentials_are_401(server: Server) -> None:
    inst = server.institutions[0]
    made = server.cli("scim", "token", "create", "--institution", inst)
    assert made.returncode == 0, made.stderr
    token_id = re.search(r"SCIM token (\w+)", made.stdout).group(1)  # type: ignore[union-attr]
    secret = made.stdout.strip().splitlines()[-1]
    assert server.scim(inst, secret).get("/Users").status_code == 200
    revoked = server.cli("scim", "token", "revoke", token_id, "--institution", inst)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    listed = server.cli("scim", "token", "list", "--institution", inst)
    assert token_id in listed.stdout and "revoked" in listed.stdout and secret not in listed.stdout
    _scim_error(server.scim(inst, secret).get("/Users"), 401)
    _scim_error(server.scim(inst, "").get("/Users"), 401)
    _scim_error(server.scim(inst, "scim-eduaiq-not-a-real-token").get("/ServiceProviderConfig"), 401)
    assert server.scim(inst, "").get("/Groups").headers["www-authenticate"].startswith("Bearer")

    admin = server.browser(inst, "it-admin")  # an institution admin's session cookie
    _scim_error(admin.get("/scim/v2/Users"), 401)
    _scim_error(admin.post("/scim/v2/Users", json={"schemas": [USER], "userName": "x@y"}), 401)
    pat = admin.post("/api/v1/tokens", json={"name": "automation", "scopes": ["org:read", "org:write"]})
    assert pat.status_code == 201, pat.text
    _scim_error(server.scim(inst, pat.json()["token"]).get("/Users"), 401)
    _scim_error(server.scim(inst, f"sk-eduaiq-demo-alice-cs101-{inst}").get("/Users"), 401)
    # Another institution's command cannot revoke this institution's token.
    other = server.cli("scim", "token", "revoke", token_id, "--institution", server.institutions[1])
    assert other.returncode == 1 and "no SCIM token" in other.stderr


def test_groups_grant_an_admin_role_only_where_the_file_maps_one(server: Server) -> None:
    inst = server.institutions[0]
    idp = server.scim(inst)
    user = _user(idp, "would.be.admin@a.example")
    for name in ("Uni admins", f"eduaiq-course-{inst}-students", "CS Finance"):
        made = idp.post("/Groups", json={"displayName": name, "members": [{"value": user}]})
        assert made.status_code == 201, made.text
    me = server.browser(inst, user).get("/api/v1/me").json()
    assert me["institution_admin"] is False
    assert [(s["unit_id"], s["role"]) for s in me["scopes"]] == [("cs", "finance")]  # the one mapped rule
    # The pattern maps the root to a student membership, never an admin scope.
    assert [(m["unit_id"], m["role"]) for m in me["memberships"]] == [(inst, "student")]

    # A pattern may not grant an admin role: the file is refused, so no IdP group name can make an admin.
    def admin_by_pattern(doc: dict[str, object]) -> None:
        doc["scim"] = {"groups": [{"match": "(?P<unit>.+)-admins", "admin_role": "admin"}]}

    refused = server.cli("org", "import", str(server.write_org(inst, admin_by_pattern)))
    assert refused.returncode != 0 and "admin_role" in refused.stderr + refused.stdout


def test_every_scim_route_refuses_callers_without_a_scim_token(server: Server) -> None:
    from fastapi.routing import APIRoute

    from admin_api.scim.routes import router

    inst = server.institutions[0]
    admin = server.browser(inst, "it-admin")
    pat = admin.post("/api/v1/tokens", json={"name": "all", "scopes": ["org:read", "org:write"]}).json()[
        "token"
    ]
    routes = [(m, r.path) for r in router.routes if isinstance(r, APIRoute) for m in sorted(r.methods or ())]
    assert len(routes) >= 20
    for method, path in routes:
        url = path.replace("{user_id}", "x").replace("{group_id}", "x").replace("{type_id}", "User")
        url = url.replace("{schema_id}", USER).replace("{rest:path}", "Users/x/y").removeprefix("/scim/v2")
        for idp in (server.scim(inst, ""), server.scim(inst, pat)):
            _scim_error(idp.request(method, url, json={}), 401)
        _scim_error(admin.request(method, "/scim/v2" + url, json={}), 401)


def test_a_mapping_to_a_unit_the_file_does_not_have_is_refused(server: Server) -> None:
    def typo(doc: dict[str, object]) -> None:
        doc["scim"] = {"groups": [{"display_name": "CS Staff", "unit": "cs-typo", "role": "instructor"}]}

    refused = server.cli("org", "import", str(server.write_org(server.institutions[0], typo)))
    assert refused.returncode != 0 and "scim.groups[0].unit" in refused.stderr + refused.stdout
