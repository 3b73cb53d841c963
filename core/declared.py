"""Lists of names and networks the operator declares in settings (`EDUAIQ_PROVIDER_SECRET_VARS`,
`EDUAIQ_UPSTREAM_ALLOWED_CIDRS`), parsed here so a bad value stops the process at start-up with the
setting's name (core/settings.py validates with these) and the provider policy reads the same result.
"""

from __future__ import annotations

import ipaddress
import re

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Variables no provider may read, declared or not: the gateway's own settings (session secret, database
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


def parse_secret_vars(value: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """(names, prefixes) from `OPENAI_API_KEY, PROVIDER_KEY_*`; ValueError for a name never allowed."""
    names: set[str] = set()
    prefixes: list[str] = []
    for part in split_list(value):
        stem = part[:-1] if part.endswith("*") else part
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", stem):
            raise ValueError(f"'{part}' is not a variable name or a prefix ending in *")
        if never_declarable(stem) or (
            part.endswith("*") and any(p.startswith(stem.upper()) for p in _NEVER_PREFIXES)
        ):
            raise ValueError(
                f"'{part}' would let providers read the gateway's own settings or database, Redis or Kafka "
                "credentials; declare only variables that hold provider keys"
            )
        if part.endswith("*"):
            prefixes.append(stem)
        else:
            names.add(stem)
    return frozenset(names), tuple(prefixes)
