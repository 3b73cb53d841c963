"""Upstream wire protocols, prices and routing. Knows nothing about budgets.

For the gateway author — the whole API in one place
====================================================

Build once per process (control plane compiles, hot path only reads)::

    from providers import build_router, RoutingConfig, UpstreamPool
    http = UpstreamPool()   # optional: one pool shared by several routers (one per institution)
    router = build_router(org["providers"], currency=org["institution"]["currency"],
                          routing=RoutingConfig(), session=http)
    await router.start()          # connection pool + background /metrics scrape & health checks
    ...
    await router.close()          # closes the pool only if the router made it

`build_router` raises `ConfigError(problems=[...])` listing each problem by its
path (`providers[1].models[0].price: ...`), e.g. a model with no price and no
litellm list price, or a self-hosted model without an internal price.

The `providers:` section (ProviderConfig / ModelConfig; org-file keys plus routing extras)::

    - id: campus-vllm
      type: vllm            # openai-compatible | vllm | openai | anthropic | gemini | together | groq | mistral | deepseek
      base_url: http://gpu01:8000/v1          # defaults exist for the commercial types
      replicas: [http://gpu02:8000/v1]        # same models on more servers: one load-balanced tier
      api_key_env: CAMPUS_VLLM_KEY            # read at request time, never stored
      priority: 0                             # fallback order (default: position in the file)
      timeouts: {connect: 5, first_byte: 60, read: 300}
      health_check: true                      # default true for vllm / openai-compatible
      metrics_url: http://gpu01:8000/metrics  # default for vllm: beside /v1
      stream_usage: reported                  # `counted` for servers that send no usage in streams
      headers: {}                             # extra upstream headers
      models:
        - id: llama-3.1-8b                    # the name clients use; same id under several providers = fallback chain
          upstream: meta-llama/Llama-3.1-8B-Instruct
          vision: false
          price: {input_per_mtok: 0.05, output_per_mtok: 0.08, cached_input_per_mtok: 0.01}
          max_output_tokens: 4096
          priority: 0                         # overrides the provider's
          fallbacks: [gpt-4o-mini]            # other model ids tried after all of this model's deployments
          image_tokens: qwen2-vl              # image rule (default: guessed from upstream)

Before routing (policy, estimate)::

    check_model(allowed, default_model, requested) -> ModelDecision(allowed, model, allowed_models, reason)
    effective_models(unit_models | None, parent_models) -> tuple[str, ...]
    router.model_ids() -> list[str]
    router.model(model_id) -> ModelInfo(id, upstream, provider_type, vision, max_output_tokens, image_tokens)
    router.price_ceiling(model_id, allowed_models=None) -> Price   # dearest price in the fallback chain
    count_image_tokens(body, rule_name, sizes=None, max_bytes=..., max_pixels=...) -> ImageTokens(total, per_image)
        rule_name = info.image_tokens or rule_for_model(info.upstream); raises ImageError (400)

Routing and streaming::

    resp = await router.open(model_id, body, stream=True, max_tokens=clamp,
                             endpoint="chat/completions",   # or "completions", "embeddings"
                             include_usage_chunk=None,       # None: forward it iff the client asked
                             allowed_models=unit_models,     # keeps cross-model fallbacks inside policy
                             needs_vision=has_images,        # skips fallbacks that cannot see
                             prompt_tokens_hint=estimate)    # input count for `stream_usage: counted` servers
    resp.status, resp.headers            # 4xx other than 429 come back here, already in OpenAI error shape
    resp.served_by                       # ServedBy(deployment_id, provider_id, provider_type, model_id,
                                         #          upstream, price=Price(input_per_mtok, output_per_mtok,
                                         #          cached_input_per_mtok, source))  micro-units per 1M tokens
    resp.attempts                        # tries that failed before it (Attempt(deployment_id, reason, status))
    async for blob in resp: send(blob)   # complete SSE events, OpenAI format for every provider
    resp.usage                           # NormalisedUsage(input, output, image, cached_input) after the end
    resp.usage_estimated                 # True when counted rather than reported
    await resp.aclose()                  # client went away: drops the upstream connection

Iterate to the end or call `aclose()`: either releases the upstream connection.
The body's `model` is replaced by the upstream name; for streams
`stream_options.include_usage` is forced on upstream; max_tokens (or
max_completion_tokens, if the client used it) becomes the smallest of the
client's, `max_tokens=` and the model's `max_output_tokens`.

Errors (each has `.status` for the HTTP answer): ModelNotFound (404), InvalidRequest /
UnsupportedEndpoint (400), ImageError (400), UpstreamUnavailable (502/503/504, raised by
`open` after the whole chain failed before the first byte; `.attempts`), UpstreamStreamError
(502, raised while iterating: the upstream broke after bytes went out; `usage` stays None).

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
from providers.http import UpstreamPool
from providers.images import RULES, ImageTokens, count_image_tokens, rule_for_model
from providers.policy import ModelDecision, check_model, effective_models
from providers.prices import Price, cost_micros, litellm_price
from providers.router import (
    DeploymentState,
    ModelInfo,
    Router,
    ServedBy,
    UpstreamResponse,
)
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
    "UpstreamPool",
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
