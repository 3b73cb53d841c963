"""Which environment variables an institution's `sso:` section may name for its secrets.

The section is written by an institution admin, and it names the variable that holds its OIDC client secret
(sent as HTTP Basic auth to the token endpoint the IdP's discovery document names) or its SAML SP key. Any
name used to be accepted, so an admin could have the session secret, PGPASSWORD or another institution's
secret sent to an IdP of their own. The provider-key rules (core/declared.py) apply here too: never the
gateway's own settings or the database, Redis and Kafka credentials, and only names the operator declared
for that institution's sign-in in EDUAIQ_SSO_SECRET_VARS (`[institution:]NAME[*][@host]`). `@host` binds an
OIDC secret to the token endpoint's host, a SAML key to the hosts the messages it signs go to.

Checked when the section is parsed (import, and every load from the database) and again each time a
secret is read (`read`), where the OIDC token endpoint's host is finally known.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from admin_api.sso.errors import SSOError
from core.declared import SecretVar, hosts_outside, never_declarable, parse_secret_vars
from providers.upstream_policy import hostname

if TYPE_CHECKING:
    from admin_api.sso.config import InstitutionSSO
    from core.settings import Settings

log = logging.getLogger(__name__)

SETTING = "EDUAIQ_SSO_SECRET_VARS"
HOLDS = "SSO secrets (OIDC client secrets, SAML SP keys)"


def declared_from(settings: Settings) -> tuple[SecretVar, ...]:
    return parse_secret_vars(settings.sso_secret_vars, holds=HOLDS)


def secret_problem(
    declared: Sequence[SecretVar], institution: str, name: str, hosts: Iterable[str] = ()
) -> str | None:
    """Why `institution`'s sign-in may not read `name` (and send it to every one of `hosts`), or None."""
    if never_declarable(name):
        return (
            f"'{name}' holds the gateway's own settings or database, Redis or Kafka credentials; no "
            "institution's sign-in may read it"
        )
    matching = [v for v in declared if v.matches(name, institution)]
    if not matching:
        return (
            f"'{name}' is not a variable the operator declared for the sign-in secrets of institution "
            f"'{institution}' ({SETTING}, as {institution}:{name}); ask the operator to declare it"
        )
    bound, foreign = hosts_outside(matching, hosts)
    if not foreign:
        return None
    return f"'{name}' may be sent only to {', '.join(bound)} ({SETTING} binds it there), not to {', '.join(foreign)}"


def saml_hosts(cfg: InstitutionSSO) -> set[str]:
    """Where the messages an SP key signs go (AuthnRequests, logout requests)."""
    idp = cfg.saml
    urls = (idp.sso_url, idp.slo_url) if idp else ()
    return {h for u in urls if u and (h := hostname(u))}


def section_problems(cfg: InstitutionSSO, declared: Sequence[SecretVar]) -> list[tuple[str, str]]:
    """(path, message) for every `*_env` field of the section that names a variable it may not read. Every
    such field is checked, so a secret added to the section later is covered without a change here."""
    problems: list[tuple[str, str]] = []
    for protocol in ("saml", "oidc", "cas"):
        block = getattr(cfg, protocol)
        if block is None:
            continue
        hosts = saml_hosts(cfg) if protocol == "saml" else set()
        for field in type(block).model_fields:
            name = getattr(block, field) if field.endswith("_env") else None
            if isinstance(name, str) and (
                problem := secret_problem(declared, cfg.institution_id, name, hosts)
            ):
                problems.append((f"sso.{protocol}.{field}", problem))
    return problems


def read(declared: Sequence[SecretVar], institution: str, name: str, hosts: Iterable[str] = ()) -> str | None:
    """The variable's value, after the same check as at parse time (a registry filled another way, a row
    edited by hand, a host known only now). Otherwise a 502 naming the setting (the sign-in settings are
    wrong, not the user), the problem in the log, and nothing read or sent."""
    problem = secret_problem(declared, institution, name, hosts)
    if problem is not None:
        log.error("institution %s: sso secret refused: %s", institution, problem)
        raise SSOError(502, "sso_secret_refused", "the institution's sign-in settings name a secret they may "
                       "not use here; the operator declares SSO secrets", {"setting": SETTING})  # fmt: skip
    return os.environ.get(name)
