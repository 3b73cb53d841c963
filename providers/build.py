"""From the org file's `providers:` section to a ready Router, refusing unpriceable models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from providers.config import ProviderConfig, RoutingConfig, compile_deployments
from providers.http import UpstreamPool
from providers.images import RULES
from providers.router import Router


def build_router(
    providers: Sequence[Mapping[str, Any] | ProviderConfig],
    *,
    currency: str = "USD",
    routing: RoutingConfig | None = None,
    session: UpstreamPool | None = None,
) -> Router:
    """Validate and compile the section (ConfigError lists every problem) and build the Router.

    The router does no I/O until `await router.start()`.
    """
    deployments = compile_deployments(providers, currency=currency, known_image_rules=frozenset(RULES))
    return Router(deployments, routing, session=session)
