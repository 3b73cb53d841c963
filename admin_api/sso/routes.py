"""The `/auth` routes: one thin handler per step of each protocol; the work is in the modules they call."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.sso import cas, oidc, saml
from admin_api.sso.errors import SSOError, error_response, sso_error_handler
from admin_api.sso.idp_http import IdpLimits
from admin_api.sso.principal import csrf_protect
from admin_api.sso.provisioning import find_user, only_institution, user_grants
from admin_api.sso.registry import SSORegistry
from admin_api.sso.service import SSOService, read_form, safe_return_to, sign_in_entry
from admin_api.sso.sso_secrets import declared_from
from core.db import session_scope
from core.settings import Settings
from core.time import utcnow
from providers.upstream_policy import UpstreamPolicy

R = TypeVar("R", bound=Response)


class SSORouter(APIRouter):
    """An APIRouter that carries its service, so `mount_sso` can hand it to the dependencies."""

    service: SSOService


def _json_errors(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[Response]]:
    """Routes answer refusals in the error shape even on an app that never installed the handler."""

    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(*args, **kwargs)
        except SSOError as exc:
            return error_response(exc)

    return wrapper


def make_sso_router(
    *,
    registry: SSORegistry,
    db: async_sessionmaker[AsyncSession],
    redis: Redis,
    settings: Settings,
    dev_mode: bool = False,
    session_ttl_seconds: int = 8 * 3600,
    cookie_secure: bool | None = None,
    allowed_origins: Sequence[str] = (),
    http: httpx.AsyncClient | None = None,
) -> SSORouter:
    """The SSO routes, to mount under `/auth` with `mount_sso`.

    `settings.public_base_url` is what IdPs see (ACS, callbacks, audience); `settings.session_secret`
    signs cookies (required unless `dev_mode`, which also enables `/auth/dev/login`). IdPs are reached under
    the operator's upstream address policy and the EDUAIQ_SSO_IDP_* limits, and SSO secrets are read only
    as EDUAIQ_SSO_SECRET_VARS declares them (`http`, when given, brings its own address rules).
    """
    svc = SSOService(
        registry=registry, db=db, redis=redis, public_base_url=settings.public_base_url,
        session_secret=settings.session_secret, dev_mode=dev_mode, session_ttl_seconds=session_ttl_seconds,
        cookie_secure=cookie_secure, allowed_origins=allowed_origins, http=http,
        address_policy=UpstreamPolicy.from_settings(settings), secret_vars=declared_from(settings),
        idp_limits=IdpLimits(settings.sso_idp_max_response_bytes, settings.sso_idp_timeout_seconds),
    )  # fmt: skip
    router = SSORouter(tags=["auth"])
    router.service = svc

    # --- SAML ---------------------------------------------------------------------------------

    @router.get("/saml/{institution}/metadata", name="sso_saml_metadata")
    @_json_errors
    async def saml_metadata(institution: str, request: Request) -> Response:
        cfg = await svc.config(institution, "saml")
        urls = svc.saml_urls(request, cfg)
        xml = saml.metadata_xml(saml.settings_for(cfg, urls, svc.secret_vars))
        return Response(xml, media_type="application/samlmetadata+xml")

    @router.get("/saml/{institution}/login", name="sso_saml_login")
    @_json_errors
    async def saml_login(institution: str, request: Request, return_to: str | None = None) -> Response:
        cfg = await svc.config(institution, "saml")
        urls = svc.saml_urls(request, cfg)
        flow_id = svc.flows.new_id()
        url, request_id = saml.login_redirect(saml.settings_for(cfg, urls, svc.secret_vars), urls, flow_id)
        await svc.flows.put(flow_id, {"kind": "saml", "institution": institution, "request_id": request_id,
                                      "return_to": safe_return_to(return_to)})  # fmt: skip
        response = RedirectResponse(url, status_code=302)
        svc.set_flow_cookie(response, flow_id, cross_site_post=True)
        return response

    @router.post("/saml/{institution}/acs", name="sso_saml_acs")
    @_json_errors
    async def saml_acs(institution: str, request: Request) -> Response:
        cfg = await svc.config(institution, "saml")
        form = await read_form(request)
        message = form.get("SAMLResponse")
        if not message:
            raise SSOError(400, "saml_response_invalid", "SAMLResponse is missing")
        ids = saml.peek_ids(message)
        for seen in filter(None, (ids.response_id, *ids.assertion_ids)):
            if await svc.flows.seen("saml", seen):
                raise SSOError(401, "saml_replayed", "this SAML response has already been used")
        relay_state = form.get("RelayState", "")
        flow = await svc.take_flow(relay_state, "saml", institution)
        svc.check_flow_cookie(request, relay_state, cross_site_post=True)
        urls = svc.saml_urls(request, cfg)
        assertion = saml.accept_response(
            saml.settings_for(cfg, urls, svc.secret_vars), urls, message, flow["request_id"]
        )
        keep = 3600
        if assertion.not_on_or_after is not None:
            keep = max(keep, int(assertion.not_on_or_after.timestamp() - utcnow().timestamp()) + 600)
        for item in (assertion.response_id, assertion.assertion_id):
            if not await svc.flows.first_use("saml", item, keep):
                raise SSOError(401, "saml_replayed", "this SAML response has already been used")
        transient = assertion.name_id_format == saml.TRANSIENT
        logout = {
            "name_id": assertion.name_id,
            "name_id_format": assertion.name_id_format or "",
            "name_id_nq": assertion.name_id_nq or "",
            "name_id_spnq": assertion.name_id_spnq or "",
            "session_index": assertion.session_index or "",
        }
        return await svc.finish_login(
            cfg, "saml", assertion.attributes, None if transient else assertion.name_id, flow["return_to"],
            logout=logout, not_after=assertion.session_not_on_or_after,
        )  # fmt: skip

    async def saml_slo(institution: str, request: Request) -> Response:
        cfg = await svc.config(institution, "saml")
        assert cfg.saml is not None
        binding: saml.Binding = "post" if request.method == "POST" else "redirect"
        params = await read_form(request) if binding == "post" else dict(request.query_params)
        urls = svc.saml_urls(request, cfg)
        settings_ = saml.settings_for(cfg, urls, svc.secret_vars)
        if params.get("SAMLResponse"):
            flow = await svc.take_flow(params.get("RelayState"), "saml-logout", institution)
            saml.accept_logout_response(settings_, cfg.saml, urls, binding, params, flow["request_id"])
            return RedirectResponse(flow["return_to"], status_code=303)
        if params.get("SAMLRequest"):
            incoming = saml.accept_logout_request(settings_, cfg.saml, urls, binding, params)
            await svc.sessions.destroy_saml(institution, incoming.name_id, incoming.session_indexes)
            kind, payload = saml.logout_response_for(settings_, urls, binding, incoming.request_id,
                                                     params.get("RelayState"))  # fmt: skip
            if kind == "redirect":
                out: Response = RedirectResponse(payload, 302)
            else:
                action = settings_.get_idp_slo_response_url() or settings_.get_idp_slo_url()
                out = HTMLResponse(
                    payload, headers={"Content-Security-Policy": saml.auto_post_policy(action)}
                )
            if await svc.session_of(request) is None:  # looked up after the ending: was it this browser's?
                svc.clear_session_cookies(out)
            return out
        raise SSOError(400, "saml_response_invalid", "expected SAMLRequest or SAMLResponse")

    # The IdP uses the Redirect binding (GET) or the POST binding; one handler, two operations.
    slo = _json_errors(saml_slo)
    router.add_api_route("/saml/{institution}/slo", slo, methods=["GET"], name="sso_saml_slo",
                         operation_id="sso_saml_slo_redirect")  # fmt: skip
    router.add_api_route("/saml/{institution}/slo", slo, methods=["POST"], name="sso_saml_slo_post",
                         operation_id="sso_saml_slo_post")  # fmt: skip

    # --- OIDC ---------------------------------------------------------------------------------

    @router.get("/oidc/{institution}/login", name="sso_oidc_login")
    @_json_errors
    async def oidc_login(institution: str, request: Request, return_to: str | None = None) -> Response:
        cfg = await svc.config(institution, "oidc")
        assert cfg.oidc is not None
        flow_id = svc.flows.new_id()
        nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        redirect_uri = svc.url(request, "sso_oidc_callback", institution=institution)
        url = await oidc.authorization_url(svc.oidc, cfg.oidc, redirect_uri, flow_id, nonce, verifier)
        await svc.flows.put(flow_id, {"kind": "oidc", "institution": institution, "nonce": nonce,
                                      "verifier": verifier, "return_to": safe_return_to(return_to)})  # fmt: skip
        response = RedirectResponse(url, status_code=302)
        svc.set_flow_cookie(response, flow_id, cross_site_post=False)
        return response

    @router.get("/oidc/{institution}/callback", name="sso_oidc_callback")
    @_json_errors
    async def oidc_callback(institution: str, request: Request) -> Response:
        cfg = await svc.config(institution, "oidc")
        assert cfg.oidc is not None
        q = request.query_params
        state = q.get("state", "")
        flow = await svc.take_flow(state, "oidc", institution)
        svc.check_flow_cookie(request, state, cross_site_post=False)
        if q.get("iss") is not None and q.get("iss") != cfg.oidc.issuer:  # RFC 9207 mix-up defence
            raise SSOError(401, "oidc_issuer_mismatch", "the answer comes from another issuer",
                           {"iss": q.get("iss")})  # fmt: skip
        if q.get("error"):
            raise SSOError(401, "oidc_error", "the identity provider did not sign you in",
                           {"error": q.get("error"), "description": q.get("error_description")})  # fmt: skip
        code = q.get("code")
        if not code:
            raise SSOError(400, "oidc_code_missing", "the callback carries no authorization code")
        redirect_uri = svc.url(request, "sso_oidc_callback", institution=institution)
        claims, id_token = await oidc.complete(svc.oidc, institution, cfg.oidc, redirect_uri, code,
                                               flow["verifier"], flow["nonce"])  # fmt: skip
        return await svc.finish_login(cfg, "oidc", claims, str(claims.get("sub") or ""), flow["return_to"],
                                      logout={"id_token": id_token})  # fmt: skip

    # --- CAS ----------------------------------------------------------------------------------

    @router.get("/cas/{institution}/login", name="sso_cas_login")
    @_json_errors
    async def cas_login(institution: str, request: Request, return_to: str | None = None) -> Response:
        cfg = await svc.config(institution, "cas")
        assert cfg.cas is not None
        flow_id = svc.flows.new_id()
        service_url = str(httpx.URL(svc.url(request, "sso_cas_callback", institution=institution),
                                    params={"flow": flow_id}))  # fmt: skip
        await svc.flows.put(flow_id, {"kind": "cas", "institution": institution, "service": service_url,
                                      "return_to": safe_return_to(return_to)})  # fmt: skip
        response = RedirectResponse(cas.login_url(cfg.cas, service_url), status_code=302)
        svc.set_flow_cookie(response, flow_id, cross_site_post=False)
        return response

    @router.get("/cas/{institution}/callback", name="sso_cas_callback")
    @_json_errors
    async def cas_callback(institution: str, request: Request) -> Response:
        cfg = await svc.config(institution, "cas")
        assert cfg.cas is not None
        ticket = request.query_params.get("ticket", "")
        if not ticket or len(ticket) > 256:
            raise SSOError(400, "cas_ticket_missing", "the callback carries no service ticket")
        # A ticket is good once: refuse a known one before even asking the server (a read, so
        # unauthenticated garbage writes nothing), and mark it used before validating it.
        if await svc.flows.seen("cas", ticket):
            raise SSOError(401, "cas_ticket_reused", "this CAS ticket has already been used")
        flow_id = request.query_params.get("flow", "")
        flow = await svc.take_flow(flow_id, "cas", institution)
        svc.check_flow_cookie(request, flow_id, cross_site_post=False)
        if not await svc.flows.first_use("cas", ticket, 24 * 3600):
            raise SSOError(401, "cas_ticket_reused", "this CAS ticket has already been used")
        user, attributes = await cas.validate(svc.http, svc.idp_limits, cfg.cas, flow["service"], ticket)
        return await svc.finish_login(cfg, "cas", attributes, user, flow["return_to"])

    # --- sessions -----------------------------------------------------------------------------

    @router.get("/session", name="sso_session")
    @_json_errors
    async def whoami(request: Request) -> Response:
        found = await svc.session_of(request)
        if found is None:
            raise SSOError(401, "not_authenticated", "no session")
        sid, record = found
        p = record.principal
        async with session_scope(db) as session:
            person = await find_user(session, p.institution_id, p.user_id)
            if person is None or person.deprovisioned_at is not None:  # the session outlived their access
                raise SSOError(
                    401, "not_authenticated", "this account no longer has access at this institution"
                )
            memberships, scopes = await user_grants(
                session, p.institution_id, p.user_id, settings.membership_grace_seconds
            )
        body = {"principal": p.model_dump(mode="json"), "memberships": memberships, "admin_scopes": scopes,
                "csrf_token": svc.sessions.csrf_token(sid)}  # fmt: skip
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @router.post("/logout", name="sso_logout")
    @_json_errors
    async def logout(request: Request) -> Response:
        await csrf_protect(request)
        found = await svc.session_of(request)
        redirect: str | None = None
        if found is not None:
            sid, _ = found
            record = await svc.sessions.destroy(sid)
            if record is not None:
                redirect = await _idp_logout(svc, request, record.principal.institution_id,
                                             record.principal.method, record.logout)  # fmt: skip
        response = JSONResponse(
            {"logged_out": True, "redirect": redirect}, headers={"Cache-Control": "no-store"}
        )
        svc.clear_session_cookies(response)
        return response

    @router.get("/dev/login", name="sso_dev_login")
    @_json_errors
    async def dev_login(
        request: Request, user: str, institution: str | None = None, return_to: str | None = None
    ) -> Response:
        if not svc.dev_mode or not loopback_connection(request):
            # Off the loopback interface, or through a proxy, it does not exist: `eduaiq dev --host
            # 0.0.0.0` (or a reverse proxy in front of it) must not offer every account to the network.
            raise SSOError(
                404, "dev_login_disabled", "the development login is off (dev mode, loopback only, no proxy)"
            )
        async with session_scope(db) as session:
            inst = institution or await only_institution(session)
            if inst is None:
                raise SSOError(400, "institution_required", "name the institution (?institution=...)")
            row = await find_user(session, inst, user)
            if row is None:
                raise SSOError(404, "unknown_user", "no such user in this institution",
                               {"institution": inst, "user": user})  # fmt: skip
            if row.deprovisioned_at is not None:  # as an SSO sign-in: a leaver gets no session
                raise SSOError(403, "user_deprovisioned", "this account no longer has access at this institution",
                               {"institution": inst, "user": user})  # fmt: skip
            session.add(sign_in_entry(inst, row.id, "dev", row.sso_subject))
        sid, _ = await svc.sessions.create(institution_id=inst, user_id=row.id, method="dev",
                                           subject=row.sso_subject, email=row.email, name=row.name)  # fmt: skip
        response = RedirectResponse(safe_return_to(return_to), status_code=303)
        svc.set_session_cookies(response, sid)
        return response

    return router


def _loopback(address: object) -> bool:
    host = address[0] if isinstance(address, tuple | list) and address else None
    try:
        ip = ipaddress.ip_address(str(host))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _ip_literal(address: object) -> bool:
    host = address[0] if isinstance(address, tuple | list) and address else None
    try:
        ipaddress.ip_address(str(host))
    except ValueError:
        return False
    return True


# Headers a reverse proxy adds. Behind a proxy on the same machine every request arrives from loopback,
# whoever sent it; a request that carries any of these came through one (or pretends to), so it is not a
# browser on this machine.
_PROXY_HEADERS = frozenset({
    "forwarded", "via", "x-real-ip", "x-client-ip", "true-client-ip", "x-cluster-client-ip",
    "cf-connecting-ip", "fastly-client-ip", "x-original-forwarded-for", "x-proxyuser-ip",
})  # fmt: skip


def _proxied(request: Request) -> bool:
    for name, _ in request.scope.get("headers") or ():
        key = name.decode("latin-1").lower()
        if key in _PROXY_HEADERS or key.startswith("x-forwarded-"):
            return True
    return False


def loopback_connection(request: Request) -> bool:
    """Both ends of the connection are loopback: the peer, and the local address the request reached (the
    bind address, or for a wildcard bind the interface it came in on), and no proxy header (a reverse
    proxy on the same host makes every peer loopback). Servers report the socket's local IP; an
    in-process test transport reports the URL's host name, and then the peer alone decides."""
    server = request.scope.get("server")
    return (
        _loopback(request.scope.get("client"))
        and (not _ip_literal(server) or _loopback(server))
        and not _proxied(request)
    )


async def _idp_logout(
    svc: SSOService, request: Request, institution: str, method: str, hints: dict[str, str]
) -> str | None:
    """Where the browser goes next to end the IdP session too (None: the IdP offers nothing)."""
    cfg = await svc.registry.get(institution)
    if cfg is None:
        return None
    if method == "saml" and cfg.saml and cfg.saml.slo_url and hints.get("name_id"):
        urls = svc.saml_urls(request, cfg)
        flow_id = svc.flows.new_id()
        url, request_id = saml.logout_redirect(
            saml.settings_for(cfg, urls, svc.secret_vars), urls, hints, flow_id
        )
        await svc.flows.put(flow_id, {"kind": "saml-logout", "institution": institution,
                                      "request_id": request_id, "return_to": "/"})  # fmt: skip
        return url
    if method == "oidc" and cfg.oidc:
        return await oidc.end_session_url(svc.oidc, cfg.oidc, hints.get("id_token"))
    if method == "cas" and cfg.cas:
        return cas.logout_url(cfg.cas, svc.public_base_url + "/")
    return None


def mount_sso(app: FastAPI, router: SSORouter, prefix: str = "/auth") -> SSOService:
    """Include the routes and make `current_principal`, `require_session` and `csrf_protect` work app-wide."""
    app.include_router(router, prefix=prefix)
    app.state.eduaiq_sso = router.service
    app.add_exception_handler(SSOError, sso_error_handler)
    return router.service
