"""The SSO client's HTTP: every exchange with an IdP under the operator's address policy, capped and timed.

An institution admin writes the OIDC `issuer` (whose discovery document then names the token, key set and
userinfo URLs) and the CAS `server_url`, and the admin API fetches them. Without a policy they could reach
the cloud metadata service (169.254.169.254) or cluster-internal services, and an IdP that answered slowly,
a byte at a time, or without end held a sign-in (and a worker's memory) as long as it liked. So:

- the client connects only to addresses the upstream policy providers use allows (`UpstreamPolicy`:
  loopback, private and link-local only where EDUAIQ_UPSTREAM_ALLOWED_CIDRS / _HOSTS say so), judged on
  every address the name resolves to, and it connects to the vetted address itself (a name that resolves
  differently a moment later cannot slip past the check);
- each answer is read up to `IdpLimits.max_response_bytes` (the discovery document, a key set, a token
  response and a CAS validation are a few KB), uncompressed (compression is not asked for and refused);
- each exchange, from connecting to the last byte, ends within `IdpLimits.timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from dataclasses import dataclass

import httpcore
import httpx

from providers.upstream_policy import UpstreamPolicy

NOT_ALLOWED = (
    "loopback, private or link-local addresses the operator has not allowed for upstreams "
    "(EDUAIQ_UPSTREAM_ALLOWED_CIDRS / EDUAIQ_UPSTREAM_ALLOWED_HOSTS)"
)


@dataclass(frozen=True, slots=True)
class IdpLimits:
    """Defaults are the settings' (EDUAIQ_SSO_IDP_MAX_RESPONSE_BYTES, EDUAIQ_SSO_IDP_TIMEOUT_SECONDS)."""

    max_response_bytes: int = 1024 * 1024
    timeout_seconds: float = 15.0


class IdpAnswerRefused(httpx.HTTPError):
    """An IdP answer larger than the cap, compressed, or not finished within the deadline."""


async def vetted_addresses(policy: UpstreamPolicy, host: str, port: int) -> list[str]:
    """The addresses `host` resolves to that the policy allows; `httpcore.ConnectError` when none is."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name the IDNA codec refuses
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    allowed: list[str] = []
    refused: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        (allowed if policy.address_allowed(host, ip) else refused).append(address)
    if not allowed:
        raise httpcore.ConnectError(f"{host} resolves to {', '.join(refused)}: {NOT_ALLOWED}")
    return list(dict.fromkeys(allowed))


class _VettedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting to vetted addresses only (TLS still verifies the host name:
    httpcore starts TLS with the URL's host, not the address)."""

    def __init__(self, policy: UpstreamPolicy, inner: httpcore.AsyncNetworkBackend) -> None:
        self._policy = policy
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for address in await vetted_addresses(self._policy, host, port):
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("an identity provider is not reached through a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PolicyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a pool whose connections go through `_VettedBackend` (no proxy: an explicit
    transport makes httpx ignore HTTP(S)_PROXY, which would otherwise connect on the client's behalf)."""

    def __init__(self, policy: UpstreamPolicy) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),  # the system store, SSL_CERT_FILE as httpx's default
            network_backend=_VettedBackend(policy, httpcore.AnyIOBackend()),
        )


def client(policy: UpstreamPolicy | None, limits: IdpLimits) -> httpx.AsyncClient:
    """The SSO service's client (policy None: no address check, for callers that bring their own rules)."""
    transport = PolicyTransport(policy) if policy is not None else None
    timeout = httpx.Timeout(min(10.0, limits.timeout_seconds))
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)


async def exchange(
    http: httpx.AsyncClient,
    limits: IdpLimits,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    content: str | None = None,
    auth: httpx.Auth | None = None,
) -> httpx.Response:
    """One request and its whole answer, at most `max_response_bytes`, within `timeout_seconds` from the
    start; the answer comes back read (status, content type and body), or an `httpx.HTTPError`."""
    request = http.build_request(method, url, headers={**(headers or {}), "Accept-Encoding": "identity"},
                                 params=params, content=content)  # fmt: skip
    body = bytearray()
    try:
        async with asyncio.timeout(limits.timeout_seconds):
            resp = await http.send(request, auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                                   stream=True)  # fmt: skip
            try:
                _check_head(resp, limits)
                async for chunk in resp.aiter_raw():
                    body.extend(chunk)
                    if len(body) > limits.max_response_bytes:
                        raise IdpAnswerRefused(f"the answer is larger than {limits.max_response_bytes} bytes")
            finally:
                await resp.aclose()
    except TimeoutError:
        raise IdpAnswerRefused(f"no complete answer within {limits.timeout_seconds:g} s") from None
    kept = {k: v for k, v in resp.headers.items() if k.lower() == "content-type"}
    return httpx.Response(resp.status_code, headers=kept, content=bytes(body), request=request)


def _check_head(resp: httpx.Response, limits: IdpLimits) -> None:
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise IdpAnswerRefused(f"the answer is compressed ({encoding}), which was not asked for")
    length = resp.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_response_bytes:
        raise IdpAnswerRefused(f"the answer is larger than {limits.max_response_bytes} bytes")
