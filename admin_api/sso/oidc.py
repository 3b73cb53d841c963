"""OpenID Connect relying party: authorization code flow with PKCE (S256) and a nonce.

authlib builds the protocol messages (grant URI, PKCE challenge, token request)
and validates the id_token claims; the HTTP goes through our shared async
httpx client, each exchange capped and timed (idp_http.py). The client secret
is read through `sso_secrets.read`, for this institution and the token endpoint's
host: the discovery document, not the institution file, names that endpoint.

The id_token is checked by us, not trusted because it came over TLS: signature
against the issuer's JWKS (refetched once on an unknown key id, so key
rotation needs no restart), asymmetric algorithms only, `iss` equal to the
configured issuer, `aud` containing our client id (and `azp` when several),
`exp`/`iat`, the nonce of this login attempt, and `at_hash` when present. The
discovery document must name the configured issuer (mix-up defence), and a
userinfo answer must be about the same `sub`.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from admin_api.sso import sso_secrets
from admin_api.sso.config import OidcProvider
from admin_api.sso.errors import SSOError
from admin_api.sso.idp_http import IdpLimits, exchange
from core.declared import SecretVar
from providers.upstream_policy import hostname

log = logging.getLogger(__name__)

ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 60


def _unreachable(what: str, exc: Exception) -> SSOError:
    return SSOError(502, "idp_unreachable", f"the identity provider's {what} could not be read",
                    {"reason": str(exc)})  # fmt: skip


def invalid_token(reason: str, claim: str | None = None) -> SSOError:
    details: dict[str, Any] = {"reason": reason}
    if claim:
        details["claim"] = claim
    return SSOError(401, "oidc_id_token_invalid", "the identity provider's id_token was refused", details)


class ProviderCache:
    """Discovery documents and key sets per issuer, kept for `ttl_seconds`; also what every exchange with an
    OIDC provider is held to: `limits`, and `secret_vars` (EDUAIQ_SSO_SECRET_VARS) for client secrets."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        ttl_seconds: float = 3600.0,
        *,
        limits: IdpLimits | None = None,
        secret_vars: Sequence[SecretVar] = (),
    ) -> None:
        self._http = http
        self._ttl = ttl_seconds
        self.limits = limits or IdpLimits()
        self.secret_vars = tuple(secret_vars)
        self._metadata: dict[str, tuple[float, dict[str, Any]]] = {}
        self._jwks: dict[str, tuple[float, dict[str, Any]]] = {}

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = await exchange(self._http, self.limits, "GET", url, headers={"Accept": "application/json"})
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _unreachable(what, exc) from None
        if not isinstance(data, dict):
            raise _unreachable(what, ValueError("not a JSON object"))
        return data

    async def metadata(self, cfg: OidcProvider) -> dict[str, Any]:
        hit = self._metadata.get(cfg.issuer)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        data = await self._get_json(url, "discovery document")
        if data.get("issuer") != cfg.issuer:
            raise SSOError(502, "idp_misconfigured", "the discovery document names another issuer",
                           {"expected": cfg.issuer, "got": data.get("issuer")})  # fmt: skip
        for needed in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(needed), str):
                raise SSOError(502, "idp_misconfigured", f"the discovery document lacks {needed}")
        self._metadata[cfg.issuer] = (time.monotonic() + self._ttl, data)
        return data

    async def jwks(self, cfg: OidcProvider, refresh: bool = False) -> KeySet:
        hit = self._jwks.get(cfg.issuer)
        if hit and hit[0] > time.monotonic() and not refresh:
            data = hit[1]
        else:
            meta = await self.metadata(cfg)
            data = await self._get_json(meta["jwks_uri"], "key set")
            self._jwks[cfg.issuer] = (time.monotonic() + self._ttl, data)
        try:
            return KeySet.import_key_set(data)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise _unreachable("key set", exc) from None

    async def post_form(self, url: str, body: str, auth: httpx.BasicAuth | None) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        return await exchange(self._http, self.limits, "POST", url, headers=headers, content=body, auth=auth)

    async def get(self, url: str, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return await exchange(self._http, self.limits, "GET", url, headers=headers)

    def client_secret(self, institution: str, cfg: OidcProvider, token_endpoint: str) -> str | None:
        """The secret, if the institution may send it to this token endpoint (`SSOError` otherwise)."""
        if cfg.client_secret_env is None:
            return None
        host = hostname(token_endpoint) or token_endpoint
        if token_endpoint.lower().startswith("http://") and not _loopback(host):
            # The secret goes as Basic auth: over plain http it would cross the network readable.
            log.error("institution %s: OIDC token endpoint %s is not https; client secret not sent", institution,
                      token_endpoint[:200])  # fmt: skip
            raise SSOError(502, "sso_secret_refused", "the identity provider's token endpoint is not https, so "
                           "the client secret is not sent to it", {"token_endpoint": token_endpoint[:200]})  # fmt: skip
        return sso_secrets.read(self.secret_vars, institution, cfg.client_secret_env, (host,))


def _loopback(host: str) -> bool:
    """This machine (an IdP in development or a test): nothing crosses a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def authorization_url(
    cache: ProviderCache, cfg: OidcProvider, redirect_uri: str, state: str, nonce: str, code_verifier: str
) -> str:
    meta = await cache.metadata(cfg)
    url = prepare_grant_uri(
        meta["authorization_endpoint"], cfg.client_id, "code", redirect_uri=redirect_uri, scope=cfg.scopes,
        state=state, nonce=nonce, code_challenge=create_s256_code_challenge(code_verifier),
        code_challenge_method="S256",
    )  # fmt: skip
    return str(url)


async def _exchange(
    cache: ProviderCache,
    institution: str,
    cfg: OidcProvider,
    meta: dict[str, Any],
    redirect_uri: str,
    code: str,
    verifier: str,
) -> dict[str, Any]:
    """The token request (client_secret_basic, or client_id in the body for a public client)."""
    secret = cache.client_secret(institution, cfg, meta["token_endpoint"])
    extra = {} if secret else {"client_id": cfg.client_id}
    body = prepare_token_request("authorization_code", code=code, redirect_uri=redirect_uri,
                                 code_verifier=verifier, **extra)  # fmt: skip
    auth = httpx.BasicAuth(quote(cfg.client_id, safe=""), quote(secret, safe="")) if secret else None
    try:
        resp = await cache.post_form(meta["token_endpoint"], body, auth)
        data = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise _unreachable("token endpoint", exc) from None
    if resp.status_code != 200 or not isinstance(data, dict) or "error" in data:
        error = data.get("error") if isinstance(data, dict) else None
        description = data.get("error_description") if isinstance(data, dict) else None
        raise SSOError(401, "oidc_code_rejected", "the identity provider refused the authorization code",
                       {"error": error, "description": description, "status": resp.status_code})  # fmt: skip
    return data


async def validate_id_token(
    cache: ProviderCache, cfg: OidcProvider, id_token: str, nonce: str, access_token: str | None
) -> dict[str, Any]:
    meta = await cache.metadata(cfg)
    offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = [a for a in offered if a in ASYMMETRIC] or ["RS256"]
    registry = JWSRegistry(algorithms=algorithms, strict_check_header=False)
    try:
        try:
            token = jwt.decode(id_token, await cache.jwks(cfg), algorithms=algorithms, registry=registry)
        except InvalidKeyIdError:
            token = jwt.decode(id_token, await cache.jwks(cfg, refresh=True), algorithms=algorithms,
                               registry=registry)  # fmt: skip
    except JoseError as exc:
        raise invalid_token(f"signature: {exc.error}: {exc.description or ''}".strip()) from None
    except ValueError as exc:
        raise invalid_token(f"malformed: {exc}") from None
    params: dict[str, Any] = {"nonce": nonce, "client_id": cfg.client_id}
    if access_token:
        params["access_token"] = access_token
    claims = CodeIDToken(
        token.claims,
        token.header,
        {"iss": {"essential": True, "value": cfg.issuer}, "aud": {"essential": True, "value": cfg.client_id},
         "nonce": {"essential": True}},
        params,
    )  # fmt: skip
    try:
        claims.validate(leeway=LEEWAY_SECONDS)
    except JoseError as exc:
        claim = getattr(exc, "claim", None)
        raise invalid_token(f"{exc.error}: {exc.description or ''}".strip(), claim) from None
    return dict(claims)


async def complete(
    cache: ProviderCache,
    institution: str,
    cfg: OidcProvider,
    redirect_uri: str,
    code: str,
    code_verifier: str,
    nonce: str,
) -> tuple[dict[str, Any], str]:
    """Exchange the code, validate the id_token, merge userinfo; returns (claims, raw id_token)."""
    meta = await cache.metadata(cfg)
    token = await _exchange(cache, institution, cfg, meta, redirect_uri, code, code_verifier)
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise invalid_token("the token response carries no id_token")
    access_token = token.get("access_token")
    claims = await validate_id_token(
        cache, cfg, id_token, nonce, access_token if isinstance(access_token, str) else None
    )
    userinfo_url = meta.get("userinfo_endpoint")
    if cfg.use_userinfo and isinstance(userinfo_url, str) and isinstance(access_token, str):
        try:
            resp = await cache.get(userinfo_url, access_token)
            resp.raise_for_status()
            info = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _unreachable("userinfo endpoint", exc) from None
        if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
            raise SSOError(401, "oidc_userinfo_mismatch", "userinfo describes another subject")
        claims = {**info, **claims}  # the signed claims win over the unsigned ones
    return claims, id_token


async def end_session_url(cache: ProviderCache, cfg: OidcProvider, id_token: str | None) -> str | None:
    """RP-initiated logout at the provider, when it offers one."""
    try:
        meta = await cache.metadata(cfg)
    except SSOError:
        return None
    endpoint = meta.get("end_session_endpoint")
    if not isinstance(endpoint, str):
        return None
    params = {"client_id": cfg.client_id}
    if id_token:
        params["id_token_hint"] = id_token
    return str(httpx.URL(endpoint, params=params))
