"""What an institution's `providers:` section may make the gateway read and reach.

A provider entry is written by an institution admin (admin API, institution
file), not by the operator who runs the gateway. Without this policy an admin
could name any environment variable as `api_key_env` (PGPASSWORD, the session
secret, another institution's key) and any `base_url` (a capture server, the
cloud metadata service at 169.254.169.254, the database's own port), and the
gateway would send that variable's value there on every request and health
probe. So the operator declares, in the gateway's settings:

- which variables hold provider secrets, for which institution, and where they
  may be sent (`EDUAIQ_PROVIDER_SECRET_VARS`: `[institution:]NAME[*][@host]`;
  one institution's admins cannot name another's key, and a key bound to a
  host goes nowhere else); the gateway's own settings and the database, Redis
  and Kafka credentials can never be declared;
- which non-public addresses upstreams may have (`EDUAIQ_UPSTREAM_ALLOWED_CIDRS`
  and `EDUAIQ_UPSTREAM_ALLOWED_HOSTS`); loopback, private (RFC 1918, ULA),
  link-local (the metadata service) and other special-purpose addresses are
  refused otherwise, as is an IPv6 address carrying one of them (NAT64, 6to4,
  Teredo, IPv4-compatible/-mapped/-translated).

Names are checked when a section is compiled (admin API, import, gateway
load); addresses written as literals then too, and every address a host name
resolves to when the upstream pool connects (a name can resolve differently
later, which is why the pool, not the compiler, has the last word). Nothing
here runs per request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.declared import (
    IPNetwork,
    SecretVar,
    hosts_outside,
    never_declarable,
    parse_networks,
    parse_secret_vars,
    split_list,
)

if TYPE_CHECKING:
    from core.settings import Settings
    from providers.config import ProviderConfig

# A header value `env:NAME` is read from that (declared) variable at request time. Used with fullmatch, as
# are the header patterns below: `$` also matches before a final newline, and `X-Title: |` in YAML ends
# with one (a bare LF ends the request head at a lenient upstream: the rest of it becomes a second request).
ENV_REF = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")
# Header names whose values are credentials: they may only come from declared variables, and a stored
# literal (written before this rule existed) is redacted wherever providers are read back.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|passw|credential|signature", re.IGNORECASE)
REDACTED = "[redacted]"


def secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER.search(name))


# A provider's extra headers are written into the upstream request as they are: a name must be an RFC 9110
# token and a value visible ASCII (or tab), so neither can start another header line or a request
# (CR/LF smuggling through the shared, pooled connections).
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"
HEADER_VALUE = r"^[\t\x20-\x7e]{0,2000}$"
_HEADER_NAME, _HEADER_VALUE = re.compile(HEADER_NAME), re.compile(HEADER_VALUE)


def header_value_ok(value: str) -> bool:
    """A value that may be written into a request head as it is (one line of printable ASCII)."""
    return _HEADER_VALUE.fullmatch(value) is not None


MAX_HEADERS = 32
# Headers the pool writes itself or that change how a message is framed, routed or kept: set by an admin
# they would desynchronise a connection other institutions' requests share.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "trailer", "expect",
     "keep-alive"}
)  # fmt: skip


def header_problems(headers: Mapping[str, str]) -> list[str]:
    """What is wrong with a provider's `headers` (empty: they may be sent)."""
    problems = [f"at most {MAX_HEADERS} headers"] if len(headers) > MAX_HEADERS else []
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            problems.append(f"header name {name[:64]!r} is not an HTTP token")
        elif name.lower() in _RESERVED_HEADERS or name.lower().startswith("proxy-"):
            problems.append(f"header {name!r} is set by the gateway itself and cannot be configured")
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            problems.append(
                f"header {name[:64]!r}: the value must be printable ASCII without line breaks, at most 2000 characters"
            )
    return problems


def redact_headers(options: Mapping[str, Any]) -> dict[str, Any]:
    """A provider's stored options with literal credential-carrying header values replaced (env: references
    name a variable, not a secret, and stay)."""
    headers = options.get("headers")
    if not isinstance(headers, Mapping):
        return dict(options)
    clean = {
        k: (REDACTED if secret_header(k) and not ENV_REF.fullmatch(str(v)) else v) for k, v in headers.items()
    }
    return {**options, "headers": clean}


def hostname(url: str) -> str | None:
    """The URL's host, lower-case and without a trailing dot; None when the URL cannot be parsed (an
    unbalanced IPv6 bracket makes urlsplit raise, which must be a 4xx problem, not a 500)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return (host or "").lower().rstrip(".")


# IPv6 ranges that are never a public upstream: deprecated site-local (RFC 3879: a private range that
# Python's `is_global` still calls global) and NAT64's local-use prefix (RFC 8215: where the IPv4 address
# sits depends on the operator's prefix length, and the translator is on the local network).
_NEVER_PUBLIC_V6 = (ipaddress.IPv6Network("fec0::/10"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# IPv6 forms whose last 32 bits are an IPv4 address a packet ends up at: NAT64's well-known prefix
# (RFC 6052), IPv4-compatible (RFC 4291, deprecated) and IPv4-translated (RFC 2765) addresses.
_LOW32_V4 = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped, NAT64, IPv4-compatible and -translated,
    6to4 (2002::/16) and Teredo (2001::/32: its server and its client)."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if any(ip in net for net in _LOW32_V4):
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo
    return ()


def public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address: not loopback, private, ULA, site-local, link-local
    (169.254.0.0/16, fe80::/10: the metadata service), shared, reserved, multicast or unspecified. An IPv6
    address that carries an IPv4 address (NAT64, 6to4, Teredo, IPv4-mapped, -compatible, -translated) is
    public only when every IPv4 address it carries is: `64:ff9b::a9fe:a9fe` reaches 169.254.169.254
    through a NAT64 gateway, and Python calls it global. IPv4-mapped is judged as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in net for net in _NEVER_PUBLIC_V6):
            return False
        elif not all(public_address(v4) for v4 in embedded_ipv4(ip)):
            return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """The operator's policy; `for_institution` narrows it to what one institution's providers may read
    (entries scoped to another institution never match; an unscoped policy matches unscoped entries only)."""

    secret_vars: tuple[SecretVar, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    institution: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamPolicy:
        hosts = frozenset(h.lower().rstrip(".") for h in split_list(settings.upstream_allowed_hosts))
        return cls(
            parse_secret_vars(settings.provider_secret_vars),
            parse_networks(settings.upstream_allowed_cidrs),
            hosts,
        )

    def for_institution(self, institution: str) -> UpstreamPolicy:
        return replace(self, institution=institution)

    # -- secrets -------------------------------------------------------------------------------------
    def _declared(self, name: str) -> list[SecretVar]:
        if never_declarable(name):
            return []
        return [v for v in self.secret_vars if v.matches(name, self.institution)]

    def secret_allowed(self, name: str, hosts: Iterable[str] = ()) -> bool:
        """`name` is declared for this institution and may be sent to every one of `hosts`."""
        return self._secret_problem("", name, hosts) is None

    def _secret_problem(
        self, path: str, name: str, hosts: Iterable[str], plain: Iterable[str] = ()
    ) -> str | None:
        """Why `name` may not be sent to `hosts` (None: it may); `plain`: those reached over http://."""
        declared = self._declared(name)
        if not declared:
            scoped = f"{self.institution}:{name}" if self.institution else name
            whose = f" of institution '{self.institution}'" if self.institution else ""
            return (
                f"{path}: '{name}' is not a variable the operator declared for the provider secrets{whose} "
                f"(EDUAIQ_PROVIDER_SECRET_VARS, as {scoped}); ask the operator to declare it"
            )
        bound, foreign = hosts_outside(declared, hosts)
        if not bound:
            return None
        if foreign:
            return (
                f"{path}: '{name}' may be sent only to {', '.join(bound)} (EDUAIQ_PROVIDER_SECRET_VARS "
                f"binds it there), not to {', '.join(foreign)}"
            )
        # Bound to a host, it crosses the network encrypted: plain http only to a host the operator named as
        # an internal upstream (EDUAIQ_UPSTREAM_ALLOWED_HOSTS: a model server's Service in the cluster).
        cleartext = sorted(h for h in plain if h not in self.allowed_hosts)
        if cleartext:
            return (
                f"{path}: '{name}' is bound to {', '.join(bound)} and goes there over https only "
                f"(an http:// URL to {', '.join(cleartext)} would send it in clear text)"
            )
        return None

    # -- addresses -----------------------------------------------------------------------------------
    def address_allowed(self, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if public_address(ip) or host.lower().rstrip(".") in self.allowed_hosts:
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowed_networks)

    def url_problem(self, path: str, url: str) -> str | None:
        """A URL whose host is an address literal (or `localhost`) the operator did not allow. Host names
        are judged when the pool connects, by what they resolve to then."""
        host = hostname(url)
        if host is None:
            return f"{path}: '{url}' is not a valid URL"
        if host in self.allowed_hosts:
            return None
        if host == "localhost" or host.endswith(".localhost"):
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address("127.0.0.1")
        else:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return None
        if self.address_allowed(host, ip):
            return None
        return (
            f"{path}: {host} is a loopback, private or link-local address; upstreams there need the "
            "operator's consent (EDUAIQ_UPSTREAM_ALLOWED_CIDRS or EDUAIQ_UPSTREAM_ALLOWED_HOSTS)"
        )

    # -- a whole provider ----------------------------------------------------------------------------
    def provider_problems(self, p: ProviderConfig, path: str) -> list[str]:
        problems: list[str] = []
        # Where the provider's secrets go: its servers (the health probe's too: it goes to the base URL, or
        # to a metrics URL on the same host; one on another host is probed without the key).
        servers = [u for u in (p.resolved_base_url, *p.replicas) if u]
        hosts = {h for u in servers if (h := hostname(u))}
        # (the health probe sends the key to a metrics URL on the same host: its scheme counts too)
        plain = {
            h
            for u in (*servers, p.metrics_url or "")
            if u.lower().startswith("http://") and (h := hostname(u))
        }
        if p.api_key_env is not None:
            problem = self._secret_problem(f"{path}.api_key_env", p.api_key_env, hosts, plain)
            if problem:
                problems.append(problem)
        for name, value in p.headers.items():
            ref = ENV_REF.fullmatch(value)
            if ref:
                problem = self._secret_problem(f"{path}.headers.{name}", ref.group(1), hosts, plain)
                if problem:
                    problems.append(problem)
            elif secret_header(name):
                problems.append(
                    f"{path}.headers.{name}: a credential may not be written into the provider; put it in a "
                    "declared variable and write env:NAME"
                )
        urls: Iterable[tuple[str, str | None]] = [
            (f"{path}.base_url", p.base_url),
            *((f"{path}.replicas[{i}]", u) for i, u in enumerate(p.replicas)),
            (f"{path}.metrics_url", p.metrics_url),
        ]
        for upath, url in urls:
            if url:
                problem = self.url_problem(upath, url)
                if problem:
                    problems.append(problem)
        return problems


async def resolved_problems(
    policy: UpstreamPolicy, providers: Iterable[ProviderConfig], resolve_seconds: float = 3.0
) -> list[str]:
    """Host names (not literals: `provider_problems` judged those) that resolve only to addresses the
    policy refuses, for telling an admin at once. Names that do not resolve here pass: the admin API may
    not see the DNS the gateway sees; the pool checks again at every new connection in any case."""
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    for i, p in enumerate(providers):
        urls = [("base_url", p.base_url), *((f"replicas[{j}]", u) for j, u in enumerate(p.replicas))]
        urls.append(("metrics_url", p.metrics_url))
        for field, url in urls:
            host = hostname(url) if url else None
            if not host or host in policy.allowed_hosts:
                continue
            try:
                ipaddress.ip_address(host)
                continue  # a literal
            except ValueError:
                pass
            try:
                async with asyncio.timeout(resolve_seconds):
                    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except UnicodeError:  # a label the IDNA codec refuses (empty, over 63 characters)
                problems.append(f"providers[{i}].{field}: '{host}' is not a valid host name")
                continue
            except (OSError, TimeoutError):
                continue
            ips = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
            if ips and not any(policy.address_allowed(host, ip) for ip in ips):
                problems.append(
                    f"providers[{i}].{field}: {host} resolves to {', '.join(sorted(map(str, ips)))}, a "
                    "loopback, private or link-local address; upstreams there need the operator's consent "
                    "(EDUAIQ_UPSTREAM_ALLOWED_CIDRS or EDUAIQ_UPSTREAM_ALLOWED_HOSTS)"
                )
    return problems
