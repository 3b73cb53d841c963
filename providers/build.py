"""From the org file's `providers:` section to a ready Router, refusing unpriceable models."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from providers.config import ProviderConfig, RoutingConfig, compile_deployments, parse_providers
from providers.http import UpstreamPool
from providers.images import RULES
from providers.router import Router
from providers.upstream_policy import UpstreamPolicy

log = logging.getLogger(__name__)


def build_router(
    providers: Sequence[Mapping[str, Any] | ProviderConfig],
    *,
    currency: str = "USD",
    routing: RoutingConfig | None = None,
    session: UpstreamPool | None = None,
    policy: UpstreamPolicy | None = None,
) -> Router:
    """Validate and compile the section (ConfigError lists every problem) and build the Router.

    With `policy`, a provider that breaks it (an undeclared secret variable, a literal credential header,
    an address the operator did not allow) is disabled, with one log line saying why: its variables are
    never read and nothing is sent to it, while the institution's other providers keep serving (refusing
    the whole section would take every model of the institution down for one bad entry; the admin API
    and the importer refuse such entries before they are stored). The router does no I/O until
    `await router.start()`.
    """
    parsed = parse_providers(providers)
    disabled: dict[str, str] = {}
    if policy is not None:
        for i, p in enumerate(parsed):
            problems = policy.provider_problems(p, f"providers[{i}]")
            if problems:
                disabled[p.id] = "; ".join(problems)
                log.error("provider %s disabled by the operator's upstream policy: %s", p.id, disabled[p.id])
    deployments = compile_deployments(parsed, currency=currency, known_image_rules=frozenset(RULES))
    if disabled:
        deployments = [
            d.model_copy(update={"disabled": disabled[d.provider_id]}) if d.provider_id in disabled else d
            for d in deployments
        ]
    return Router(deployments, routing, session=session)
