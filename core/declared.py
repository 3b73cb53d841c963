"""Lists of names and networks the operator declares in settings (`EDUAIQ_PROVIDER_SECRET_VARS`,
`EDUAIQ_SSO_SECRET_VARS`, `EDUAIQ_UPSTREAM_ALLOWED_CIDRS`), parsed here so a bad value stops the process at
start-up with the setting's name (core/settings.py validates with these) and the provider policy and the SSO
settings (admin_api/sso/sso_secrets.py) read the same result.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Variables no provider and no institution's sign-in settings may read, declared or not: the gateway's own settings (session secret, database
# and Kafka URLs and passwords) and the standard variables of the PostgreSQL, Redis and Kafka clients.
_NEVER_PREFIXES = ("EDUAIQ_", "PG", "REDIS", "KAFKA", "CELERY", "DATABASE_URL")


def never_declarable(name: str) -> bool:
    return name.upper().startswith(_NEVER_PREFIXES)


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """`10.0.0.0/8, ::1/128` as networks; ValueError names the entry that is not one."""
    out: list[IPNetwork] = []
    for part in split_list(value):
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"'{part}' is not a CIDR such as 10.0.0.0/8 or ::1/128") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SecretVar:
    """One `EDUAIQ_PROVIDER_SECRET_VARS` (or `EDUAIQ_SSO_SECRET_VARS`) entry: `[institution:]NAME[*][@host]`.

    `institution` None: any institution's providers (or sign-in settings) may read it (meant for a deployment serving one
    institution; with several, an unscoped key is readable by every institution's admins). `host` None:
    it may be sent to any upstream the address policy allows; otherwise only to that host (any port).
    """

    institution: str | None
    name: str
    prefix: bool
    host: str | None

    def matches(self, name: str, institution: str | None) -> bool:
        if self.institution is not None and self.institution != institution:
            return False
        return name.startswith(self.name) if self.prefix else name == self.name


def hosts_outside(matching: Sequence[SecretVar], hosts: Iterable[str]) -> tuple[list[str], list[str]]:
    """The hosts the declared entries for one variable bind it to, and those of `hosts` outside them (both
    empty when one entry binds it to no host: it may go anywhere the address policy allows). One rule for
    provider keys and sign-in secrets."""
    if any(v.host is None for v in matching):
        return [], []
    bound = {v.host for v in matching if v.host is not None}
    return sorted(bound), sorted(set(hosts) - bound)


_INSTITUTION = re.compile(r"^[a-z0-9][a-z0-9\-]{0,63}$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.\-]*[a-z0-9])?)$")
SECRET_VARS_FORM = "[institution:]NAME[*][@host], e.g. stateu:OPENAI_API_KEY@api.openai.com"


def parse_secret_vars(value: str, holds: str = "provider keys") -> tuple[SecretVar, ...]:
    """The entries of `stateu:OPENAI_API_KEY@api.openai.com, stateu:STATEU_*`; ValueError names an entry
    that is malformed or names a variable nobody may ever read. `holds` says what the declared variables
    are for, in that message (one grammar for provider keys and SSO secrets, so one parser)."""
    out: list[SecretVar] = []
    for part in split_list(value):
        head, at, host = part.partition("@")
        scope, colon, var = head.rpartition(":")
        host = host.lower().rstrip(".")
        if colon and not _INSTITUTION.match(scope):
            raise ValueError(f"'{part}': '{scope}' is not an institution id (form: {SECRET_VARS_FORM})")
        if at and not _HOST.match(host):
            raise ValueError(f"'{part}': '{host}' is not a host name (form: {SECRET_VARS_FORM})")
        prefix = var.endswith("*")
        stem = var[:-1] if prefix else var
        if not _VAR.match(stem):
            raise ValueError(
                f"'{part}' is not a variable name or a prefix ending in * (form: {SECRET_VARS_FORM})"
            )
        if never_declarable(stem) or (prefix and any(p.startswith(stem.upper()) for p in _NEVER_PREFIXES)):
            raise ValueError(
                f"'{part}' would let institutions read the gateway's own settings or database, Redis or Kafka "
                f"credentials; declare only variables that hold {holds}"
            )
        out.append(SecretVar(scope or None, stem, prefix, host.strip("[]") or None))
    return tuple(out)
