"""What every sign-in method shares: configuration lookup, our public URLs, cookies, and finishing a login.

A protocol module ends with an attribute bag; `finish_login` turns it into an
identity (mapping), database rows (provisioning) and a session (Redis), and
answers the browser with the session cookies and a redirect back into the app.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import httpx
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.sso import idp_http
from admin_api.sso.config import InstitutionSSO
from admin_api.sso.errors import SSOError, bad_state, not_configured
from admin_api.sso.flows import FLOW_TTL_SECONDS, FlowStore
from admin_api.sso.idp_http import IdpLimits
from admin_api.sso.mapping import map_identity, normalize
from admin_api.sso.oidc import ProviderCache
from admin_api.sso.provisioning import provision
from admin_api.sso.registry import SSORegistry
from admin_api.sso.saml import SpUrls
from admin_api.sso.sessions import Method, SessionRecord, SessionStore, resolve_secret
from admin_api.sso.sso_secrets import SETTING, section_problems
from core.db import session_scope
from core.declared import SecretVar
from core.models import AuditEntry
from providers.upstream_policy import UpstreamPolicy

log = logging.getLogger(__name__)

SESSION_COOKIE = "eduaiq_session"
CSRF_COOKIE = "eduaiq_csrf"
CSRF_HEADER = "X-CSRF-Token"
FLOW_COOKIE = "eduaiq_sso_flow"
MAX_FORM_BYTES = 512 * 1024  # a signed SAML response with many groups is tens of KB
ProtocolName = Literal["saml", "oidc", "cas"]


def origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def safe_return_to(value: str | None) -> str:
    """Only a path on this site: an open redirect after login is a phishing tool."""
    if not value or len(value) > 2048 or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(ch) < 32 or ch == "\\" for ch in value):
        return "/"
    return value


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded POST body (the SAML bindings), size-capped, without python-multipart."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise SSOError(415, "unsupported_media_type", "expected an application/x-www-form-urlencoded form")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FORM_BYTES:
            raise SSOError(413, "payload_too_large", "the form is larger than any SAML message should be")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        raise SSOError(400, "bad_request", "the form is not UTF-8") from None


def sign_in_entry(
    institution_id: str, user_id: str, method: str, subject: str | None, **extra: Any
) -> AuditEntry:
    """The audit log's record of a sign-in (SAML, OIDC, CAS or the development login)."""
    return AuditEntry(institution_id=institution_id, actor=f"sso:{method}", action="sso.login",
                      target=f"app_user:{institution_id}/{user_id}", before=None,
                      after={"user_id": user_id, "method": method, "subject": subject, **extra})  # fmt: skip


class SSOService:
    def __init__(
        self,
        *,
        registry: SSORegistry,
        db: async_sessionmaker[AsyncSession],
        redis: Redis,
        public_base_url: str,
        session_secret: str | None,
        dev_mode: bool = False,
        session_ttl_seconds: int = 8 * 3600,
        cookie_secure: bool | None = None,
        allowed_origins: Sequence[str] = (),
        http: httpx.AsyncClient | None = None,
        address_policy: UpstreamPolicy | None = None,
        secret_vars: Sequence[SecretVar] = (),
        idp_limits: IdpLimits | None = None,
    ) -> None:
        """`address_policy`: where IdPs may be (make_sso_router passes the operator's; None here is no check,
        for a caller that brings its own `http`). `secret_vars`: EDUAIQ_SSO_SECRET_VARS, which every secret
        a configuration names must be declared in (none declared: no secret may be read)."""
        self.registry = registry
        self.db = db
        self.public_base_url = public_base_url.rstrip("/")
        self.dev_mode = dev_mode
        self.cookie_secure = (
            self.public_base_url.startswith("https://") if cookie_secure is None else cookie_secure
        )
        self.sessions = SessionStore(redis, resolve_secret(session_secret, dev_mode), session_ttl_seconds)
        self.flows = FlowStore(redis)
        self._own_http = http is None
        self.idp_limits = idp_limits or IdpLimits()
        self.secret_vars = tuple(secret_vars)
        self.http = http or idp_http.client(address_policy, self.idp_limits)
        self.oidc = ProviderCache(self.http, limits=self.idp_limits, secret_vars=self.secret_vars)
        origins = [origin_of(self.public_base_url), *(origin_of(o) for o in allowed_origins)]
        self.allowed_origins = {o for o in origins if o}

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    # --- configuration and URLs ---------------------------------------------------------------

    async def config(self, institution: str, method: ProtocolName) -> InstitutionSSO:
        cfg = await self.registry.get(institution)
        if cfg is None or getattr(cfg, method) is None:
            raise not_configured(institution, method)
        # The parse-time check once more (a registry may be filled without parsing): a section naming a
        # secret it may not read offers no sign-in at all, whichever method is asked for.
        refused = section_problems(cfg, self.secret_vars)
        if refused:
            log.error("institution %s: sso settings refused: %s", institution, refused)
            raise SSOError(502, "sso_secret_refused", "the institution's sign-in settings name a secret they "
                           "may not use; the operator declares SSO secrets", {"setting": SETTING})  # fmt: skip
        return cfg

    def url(self, request: Request, name: str, **params: str) -> str:
        """Our public URL for a route: from settings, never from the Host header."""
        return self.public_base_url + str(request.app.url_path_for(name, **params))

    def saml_urls(self, request: Request, cfg: InstitutionSSO) -> SpUrls:
        inst = cfg.institution_id
        metadata = self.url(request, "sso_saml_metadata", institution=inst)
        entity_id = (cfg.saml.sp_entity_id if cfg.saml else None) or metadata
        return SpUrls(
            entity_id=entity_id,
            metadata=metadata,
            acs=self.url(request, "sso_saml_acs", institution=inst),
            slo=self.url(request, "sso_saml_slo", institution=inst),
        )

    # --- cookies ------------------------------------------------------------------------------

    def set_flow_cookie(self, response: Response, flow_id: str, cross_site_post: bool) -> None:
        """Binds the attempt to this browser, so nobody can finish their login in someone else's."""
        same_site: Literal["lax", "none"] = "none" if cross_site_post and self.cookie_secure else "lax"
        response.set_cookie(FLOW_COOKIE, flow_id, max_age=FLOW_TTL_SECONDS, path="/", secure=self.cookie_secure,
                            httponly=True, samesite=same_site)  # fmt: skip

    def check_flow_cookie(self, request: Request, flow_id: str, cross_site_post: bool) -> None:
        # A SAML POST from the IdP is cross-site: only a SameSite=None cookie rides along, and browsers
        # accept those only when Secure. Over plain http (dev) the SAML flow rests on InResponseTo alone.
        if cross_site_post and not self.cookie_secure:
            return
        cookie = request.cookies.get(FLOW_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, flow_id):
            raise bad_state("this sign-in was started in another browser")

    def set_session_cookies(self, response: Response, sid: str) -> None:
        ttl = self.sessions.ttl_seconds
        response.set_cookie(SESSION_COOKIE, self.sessions.cookie_value(sid), max_age=ttl, path="/",
                            secure=self.cookie_secure, httponly=True, samesite="lax")  # fmt: skip
        # Readable by the SPA (not HttpOnly) so it can echo it in the X-CSRF-Token header.
        response.set_cookie(CSRF_COOKIE, self.sessions.csrf_token(sid), max_age=ttl, path="/",
                            secure=self.cookie_secure, httponly=False, samesite="lax")  # fmt: skip
        response.delete_cookie(FLOW_COOKIE, path="/", secure=self.cookie_secure, httponly=True)

    def clear_session_cookies(self, response: Response) -> None:
        for name, http_only in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
            response.delete_cookie(
                name, path="/", secure=self.cookie_secure, httponly=http_only, samesite="lax"
            )

    # --- sessions -----------------------------------------------------------------------------

    async def session_of(self, request: Request) -> tuple[str, SessionRecord] | None:
        """The request's live session, looked up once per request."""
        if hasattr(request.state, "eduaiq_sso_session"):
            cached: tuple[str, SessionRecord] | None = request.state.eduaiq_sso_session
            return cached
        found: tuple[str, SessionRecord] | None = None
        sid = self.sessions.sid_from_cookie(request.cookies.get(SESSION_COOKIE))
        if sid is not None:
            record = await self.sessions.load(sid)
            if record is not None:
                found = (sid, record)
        request.state.eduaiq_sso_session = found
        return found

    async def finish_login(
        self,
        cfg: InstitutionSSO,
        method: Method,
        raw_attributes: Mapping[str, object],
        protocol_subject: str | None,
        return_to: str,
        logout: dict[str, str] | None = None,
        not_after: datetime | None = None,
    ) -> Response:
        identity = map_identity(cfg.institution_id, normalize(raw_attributes), cfg.mapping, protocol_subject)
        async with session_scope(self.db) as session:
            result = await provision(session, cfg.institution_id, identity, method=method,
                                     create_users=cfg.mapping.create_users)  # fmt: skip
            session.add(sign_in_entry(cfg.institution_id, result.user_id, method, identity.subject,
                                      created=result.created))  # fmt: skip
        sid, _ = await self.sessions.create(
            institution_id=cfg.institution_id, user_id=result.user_id, method=method, subject=identity.subject,
            email=identity.email, name=identity.name, affiliations=list(identity.affiliations), logout=logout,
            not_after=not_after,
        )  # fmt: skip
        log.info("sso login institution=%s user=%s method=%s changes=%d ignored=%d", cfg.institution_id,
                 result.user_id, method, len(result.changes), len(identity.ignored))  # fmt: skip
        response = RedirectResponse(safe_return_to(return_to), status_code=303)
        self.set_session_cookies(response, sid)
        return response

    async def take_flow(self, flow_id: str | None, kind: str, institution: str) -> dict[str, Any]:
        flow = await self.flows.take(flow_id or "")
        if flow is None:
            raise bad_state("unknown or expired")
        if flow.get("kind") != kind or flow.get("institution") != institution:
            raise bad_state("answer for another sign-in")
        return flow
