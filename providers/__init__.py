"""Upstream wire protocols, prices and routing. Knows nothing about budgets.

For the gateway author — the whole API in one place
====================================================

Build once per process (control plane compiles, hot path only reads)::

    from providers import build_router, RoutingConfig
    router = build_router(org["providers"], currency=org["institution"]["currency"])
    await router.start()          # shared aiohttp pool + background /metrics scrape & health checks
    ...
    await router.close()

`build_router` raises `ConfigError(problems=[...])` listing each problem by its
path (`providers[1].models[0].price: ...`), e.g. a model with no price and no
litellm list price, or a self-hosted model without an internal price.

Before routing (policy, estimate):

    check_model(allowed, default_model, requested) -> ModelDecision(allowed, model, allowed_models, reason)
    router.model(model_id) -> ModelInfo(id, upstream, provider_type, vision, max_output_tokens, image_tokens)
    router.price_ceiling(model_id, allowed_models=None) -> Price   # dearest price in the fallback chain
    count_image_tokens(body, rule_name, sizes=None, max_bytes=..., max_pixels=...) -> ImageTokens(total, per_image)
        rule_name = info.image_tokens or rule_for_model(info.upstream); raises ImageError (400)

Routing and streaming::

    resp = await router.open(model_id, body, stream=True, max_tokens=clamp,
                             endpoint="chat/completions",   # or "completions", "embeddings"
                             include_usage_chunk=None,       # None: forward it iff the client asked
                             allowed_models=unit_models, needs_vision=has_images)
    resp.status, resp.headers            # 4xx other than 429 come back here, already in OpenAI error shape
    resp.served_by                       # ServedBy(deployment_id, provider_id, provider_type, model_id,
                                         #          upstream, price=Price(input_per_mtok, output_per_mtok, ...))
    resp.attempts                        # failed tries before it (Attempt(deployment_id, reason, status))
    async for blob in resp: send(blob)   # complete SSE events, OpenAI format for every provider
    resp.usage                           # NormalisedUsage(input, output, image, cached_input) after the end
    await resp.aclose()                  # client went away: drops the upstream connection

Errors (each has `.status` for the HTTP answer): ModelNotFound (404), InvalidRequest /
UnsupportedEndpoint (400), ImageError (400), UpstreamUnavailable (502/503/504, raised by
`open` after the whole chain failed before the first byte), UpstreamStreamError (502,
raised while iterating: the upstream broke after bytes went out; `usage` stays None).

Charge `resp.served_by.price.cost_micros(resp.usage)`: the price of the deployment that served.
"""

from __future__ import annotations

from providers.build import build_router
from providers.config import (
    DeploymentConfig,
    ModelConfig,
    PriceConfig,
    ProviderConfig,
    RoutingConfig,
    TimeoutConfig,
    compile_deployments,
    parse_providers,
)
from providers.errors import (
    Attempt,
    ConfigError,
    ImageError,
    ImageTooLarge,
    InvalidRequest,
    MalformedImage,
    ModelNotFound,
    ProviderError,
    UnsupportedEndpoint,
    UpstreamStreamError,
    UpstreamUnavailable,
)
from providers.images import RULES, ImageTokens, count_image_tokens, rule_for_model
from providers.policy import ModelDecision, check_model, effective_models
from providers.prices import Price, cost_micros, litellm_price
from providers.router import DeploymentState, ModelInfo, Router, ServedBy, UpstreamResponse
from providers.usage import NormalisedUsage

__all__ = [
    "RULES",
    "Attempt",
    "ConfigError",
    "DeploymentConfig",
    "DeploymentState",
    "ImageError",
    "ImageTokens",
    "ImageTooLarge",
    "InvalidRequest",
    "MalformedImage",
    "ModelConfig",
    "ModelDecision",
    "ModelInfo",
    "ModelNotFound",
    "NormalisedUsage",
    "Price",
    "PriceConfig",
    "ProviderConfig",
    "ProviderError",
    "Router",
    "RoutingConfig",
    "ServedBy",
    "TimeoutConfig",
    "UnsupportedEndpoint",
    "UpstreamResponse",
    "UpstreamStreamError",
    "UpstreamUnavailable",
    "build_router",
    "check_model",
    "compile_deployments",
    "cost_micros",
    "count_image_tokens",
    "effective_models",
    "litellm_price",
    "parse_providers",
    "rule_for_model",
]
