"""The control plane: the admin API under /api/v1 (and sign-in under /auth).

Public entry point::

    from admin_api.app import create_app
    app = create_app(settings, dev_login=False, quota_loader=None, sso_registry=None)

Layout: `app` builds the FastAPI app; `routes/` holds one module per resource;
`access` is every permission decision (roles over the unit tree); `auth` turns
a session cookie or a personal access token into a caller; `context` gives a
route its caller, database session and audit trail; `publish` applies a
committed change to Redis (quota compile and the gateways' catalog channel).
`orgfile/` (the institution file) and `sso/` (sign-in) are packages of their own.
"""
