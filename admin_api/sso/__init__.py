"""Single sign-on for the admin side: SAML 2.0, OpenID Connect and CAS 3.0, sessions and CSRF.

Wiring (the composition root does this once)::

    router = make_sso_router(registry=registry, db=session_factory(engine), redis=redis,
                             settings=get_settings(), dev_mode=dev)
    mount_sso(app, router)                      # routes under /auth, error handler, app.state
    @app.post("/api/v1/...", dependencies=[Depends(csrf_protect)])
    async def change(principal: Principal = Depends(require_session)): ...

See README.md beside this file for the `sso:` section and the attribute convention.
"""

from admin_api.sso.config import (
    AttributeNames,
    CasServer,
    GrantRule,
    InstitutionSSO,
    Mapping,
    OidcProvider,
    SamlIdP,
    SSOConfigError,
    parse_sso_section,
)
from admin_api.sso.errors import SSOError, error_response, sso_error_handler
from admin_api.sso.mapping import Identity, map_identity
from admin_api.sso.principal import csrf_protect, current_principal, require_session
from admin_api.sso.registry import LoaderRegistry, SSORegistry, StaticRegistry
from admin_api.sso.routes import SSORouter, make_sso_router, mount_sso
from admin_api.sso.service import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, SSOService
from admin_api.sso.sessions import Principal

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "AttributeNames",
    "CasServer",
    "GrantRule",
    "Identity",
    "InstitutionSSO",
    "LoaderRegistry",
    "Mapping",
    "OidcProvider",
    "Principal",
    "SSOConfigError",
    "SSOError",
    "SSORegistry",
    "SSORouter",
    "SSOService",
    "SamlIdP",
    "StaticRegistry",
    "csrf_protect",
    "current_principal",
    "error_response",
    "make_sso_router",
    "map_identity",
    "mount_sso",
    "parse_sso_section",
    "require_session",
    "sso_error_handler",
]
