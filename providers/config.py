"""The org file's `providers:` section as pydantic models, and its compiled form.

`ProviderConfig`/`ModelConfig` mirror what an institution writes. The hot
path never reads them: `compile_deployments` turns them into flat
`DeploymentConfig`s (one per server and model, price already resolved to
micro-units) and refuses the whole section, every problem listed by its path,
when something is wrong — a model nobody can price included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.money import plain_number
from providers.errors import ConfigError
from providers.prices import SELF_HOSTED_TYPES, Price, litellm_price, price_to_micros
from providers.upstream_policy import ENV_REF, UpstreamPolicy, header_problems, hostname

ProviderType = Literal[
    "openai-compatible", "vllm", "openai", "anthropic", "gemini", "together", "groq", "mistral", "deepseek"
]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "together": "https://api.together.xyz/v1",
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/v1",
}

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PriceConfig(BaseModel):
    """Currency units (of the institution's currency) per 1M tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)
    cached_input_per_mtok: Decimal | None = Field(default=None, ge=0)


class TimeoutConfig(BaseModel):
    """Seconds. `first_byte` bounds connect + headers + first event of a stream: the window in which
    falling back is safe. `read` bounds each wait between stream chunks, and a whole non-stream answer.
    Each is bounded (a minute, ten minutes, an hour): an upstream holds a request, and what the worker
    reads of it, no longer than this, whoever set it."""

    model_config = ConfigDict(extra="forbid")

    connect: float = Field(default=5.0, gt=0, le=60)
    first_byte: float = Field(default=60.0, gt=0, le=600)
    read: float = Field(default=300.0, gt=0, le=3600)


# Contract ceilings are held in micro-units in Lua numbers: 9e9 currency units stays below 2^53 micro-units.
MAX_CONTRACT_COST = Decimal(9_000_000_000)
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent")


class LimitsConfig(BaseModel):
    """Rate limits of one node (a unit's subtree, each member of a unit, a provider or a model).

    Requests and tokens per minute count over a sliding window of 60 one-second buckets; `concurrent`
    counts requests in progress. A request must fit every limit on its path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=None, ge=1, le=10**9)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10**12)
    concurrent: int | None = Field(default=None, ge=1, le=10**6)

    @model_validator(mode="after")
    def _some(self) -> LimitsConfig:
        if self.requests_per_minute is None and self.tokens_per_minute is None and self.concurrent is None:
            raise PydanticCustomError("limits_empty", "give at least one of " + ", ".join(LIMIT_FIELDS))
        return self


class ContractConfig(BaseModel):
    """A committed-spend ceiling with a provider (or one of its models), in the institution's currency
    per calendar month or year: no sum of unit budgets can spend past it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost: Decimal = Field(gt=0, decimal_places=6)
    period: Literal["month", "year"]

    @field_serializer("cost", when_used="json")
    def _plain(self, v: Decimal) -> int | float:
        """Stored and exported as a number (50000, not the string '50000')."""
        return plain_number(v)

    @field_validator("cost")
    @classmethod
    def _bounded(cls, v: Decimal) -> Decimal:
        if v > MAX_CONTRACT_COST:
            raise PydanticCustomError("too_large", "too large (at most 9,000,000,000)")
        return v


class QueueConfig(BaseModel):
    """How requests wait for a slot of a self-hosted model when every slot is busy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_wait_seconds: float = Field(default=30.0, gt=0, le=300)
    max_waiting: int = Field(default=1000, ge=1, le=100_000)
    retry_after_seconds: int = Field(default=5, ge=1, le=120)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    upstream: str | None = None
    vision: bool = False
    price: PriceConfig | None = None
    max_output_tokens: int | None = Field(default=None, gt=0)
    priority: int | None = None
    fallbacks: list[str] = Field(default_factory=list)
    image_tokens: str | None = None
    slots: int | None = Field(default=None, ge=1, le=100_000)
    """Concurrent requests over all replicas of a self-hosted model; more wait in a fair queue."""
    queue: QueueConfig | None = None
    """The queue's bounds (defaults apply to a model with `slots` and no `queue`)."""
    limits: LimitsConfig | None = None
    contract: ContractConfig | None = None

    @property
    def queue_config(self) -> QueueConfig | None:
        """The queue's settings when the model has slots, else None (nothing is queued)."""
        if self.slots is None:
            return None
        return self.queue or QueueConfig()

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.id


def _check_url(url: str) -> None:
    """An upstream URL: http(s), and no user:password@ (a credential written there is shown to everyone who
    reads providers back, and goes to the host unchecked by EDUAIQ_PROVIDER_SECRET_VARS)."""
    if not re.match(r"^https?://[^\s/]+", url):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in urlsplit(url).netloc:
        raise ValueError("a URL may not carry user:password@; put the credential in a declared variable")


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    type: ProviderType
    base_url: str | None = None
    replicas: list[str] = Field(default_factory=list, max_length=64)  # each is probed: bounded
    api_key_env: str | None = None
    priority: int | None = None
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    health_check: bool | None = None
    metrics_url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    stream_usage: Literal["reported", "counted"] = "reported"
    """`counted` for OpenAI-compatible servers that send no usage in streams (llama-cpp-python)."""
    models: list[ModelConfig] = Field(default_factory=list)
    limits: LimitsConfig | None = None
    """The provider's rate limits, institution-wide over every gateway replica."""
    contract: ContractConfig | None = None

    @field_validator("base_url", "metrics_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            _check_url(v)
        return v.rstrip("/") if v else v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        if problems := header_problems(v):
            raise ValueError("; ".join(problems))
        return v

    @field_validator("replicas")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            _check_url(u)
        return [u.rstrip("/") for u in v]

    @property
    def self_hosted(self) -> bool:
        return self.type in SELF_HOSTED_TYPES

    @property
    def resolved_base_url(self) -> str | None:
        """`base_url`, or the provider type's public API when none is given."""
        return self.base_url or DEFAULT_BASE_URLS.get(self.type)


class RoutingConfig(BaseModel):
    """Process-wide routing knobs (not in the org file; the gateway's settings may set them)."""

    model_config = ConfigDict(extra="forbid")

    refresh_interval: float = Field(default=1.5, gt=0)
    probe_timeout: float = Field(default=1.0, gt=0)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown: float = Field(default=5.0, gt=0)


class DeploymentConfig(BaseModel):
    """One model on one server: everything the hot path needs, nothing it must look up."""

    model_config = ConfigDict(frozen=True)

    id: str
    provider_id: str
    provider_type: ProviderType
    endpoint_id: str
    base_url: str
    api_key_env: str | None
    headers: dict[str, str]
    model_id: str
    upstream: str
    vision: bool
    max_output_tokens: int | None
    image_tokens: str | None
    price: Price
    priority: int
    order: int
    fallbacks: tuple[str, ...]
    timeouts: TimeoutConfig
    health_check: bool
    metrics_url: str | None
    stream_usage: Literal["reported", "counted"] = "reported"
    # Headers whose value is `env:NAME`: (header, variable), read at request time like the key.
    header_env: tuple[tuple[str, str], ...] = ()
    # The variable whose value the health probe sends as its bearer token: `api_key_env`, or None when the
    # probe goes to a metrics URL on another host than `base_url` (the key is meant for the model server,
    # and a host it is bound to in EDUAIQ_PROVIDER_SECRET_VARS is judged by `base_url` and replicas only).
    probe_key_env: str | None = None
    # Why the gateway will not use this deployment (its provider breaks the operator's policy), or None.
    disabled: str | None = None
    # Concurrent slots of the model over all its replicas, and how requests queue for them (None: no queue).
    slots: int | None = None
    queue: QueueConfig | None = None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_providers(raw: Sequence[Mapping[str, Any] | ProviderConfig]) -> list[ProviderConfig]:
    """Validate the raw `providers:` list, collecting every problem as `providers[i].field: message`."""
    problems: list[str] = []
    out: list[ProviderConfig] = []
    for i, item in enumerate(raw):
        if isinstance(item, ProviderConfig):
            out.append(item)
            continue
        try:
            out.append(ProviderConfig.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                problems.append(f"{_loc(('providers', i, *err['loc']))}: {err['msg']}")
    if problems:
        raise ConfigError(problems)
    return out


def _resolve_price(
    p: ProviderConfig, m: ModelConfig, path: str, currency: str, problems: list[str]
) -> Price | None:
    if m.price is not None:
        return Price(
            price_to_micros(m.price.input_per_mtok),
            price_to_micros(m.price.output_per_mtok),
            price_to_micros(m.price.cached_input_per_mtok)
            if m.price.cached_input_per_mtok is not None
            else None,
            "internal" if p.self_hosted else "contract",
        )
    if p.self_hosted:
        problems.append(
            f"{path}.price: self-hosted model '{m.id}' needs an internal price (no list price exists)"
        )
        return None
    if currency.upper() != "USD":
        problems.append(
            f"{path}.price: no price given and litellm's list prices are in USD, not {currency}; "
            "give price: {input_per_mtok, output_per_mtok}"
        )
        return None
    price = litellm_price(p.type, m.upstream_name)
    if price is None:
        problems.append(
            f"{path}.price: litellm has no price for {p.type} model '{m.upstream_name}'; "
            "give price: {input_per_mtok, output_per_mtok}"
        )
    return price


def _same_host(metrics_url: str | None, base_url: str) -> bool:
    """The probe goes to `metrics_url` (or, without one, to the base URL itself)."""
    return metrics_url is None or hostname(metrics_url) == hostname(base_url)


def default_metrics_url(base_url: str) -> str:
    """vLLM serves /metrics at the server root, beside /v1."""
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    return root + "/metrics"


def compile_deployments(
    providers: Sequence[Mapping[str, Any] | ProviderConfig],
    *,
    currency: str = "USD",
    known_image_rules: frozenset[str] | None = None,
    policy: UpstreamPolicy | None = None,
) -> list[DeploymentConfig]:
    """Flatten and check the section; raise ConfigError listing every problem, or return the deployments.

    With `policy` (the admin API and the importer pass the operator's) a provider reading an undeclared
    variable, carrying a literal credential header or pointing at a non-public address literal is one
    more problem; the gateway instead compiles without it and disables such providers (`build_router`).

    Fallback order: by `priority` (model's, else provider's, else the provider's
    position in the file), then file order; deployments of equal priority form
    one tier the router balances by load (a provider's replicas always do).
    """
    parsed = parse_providers(providers)
    problems: list[str] = []
    seen_providers: set[str] = set()
    all_models = {m.id for p in parsed for m in p.models}
    out: list[DeploymentConfig] = []
    order = 0
    for i, p in enumerate(parsed):
        path = f"providers[{i}]"
        if p.id in seen_providers:
            problems.append(f"{path}.id: duplicate provider id '{p.id}'")
        seen_providers.add(p.id)
        base_url = p.base_url or DEFAULT_BASE_URLS.get(p.type)
        if base_url is None:
            problems.append(f"{path}.base_url: required for type {p.type}")
            continue
        if not p.self_hosted and not p.api_key_env:
            problems.append(f"{path}.api_key_env: required for type {p.type} (the key is read from it)")
        if p.api_key_env is not None and not _ENV.match(p.api_key_env):
            problems.append(f"{path}.api_key_env: '{p.api_key_env}' is not an environment variable name")
        if policy is not None:
            problems.extend(policy.provider_problems(p, path))
        urls = [base_url, *p.replicas]
        literal_headers = {k: v for k, v in p.headers.items() if not ENV_REF.fullmatch(v)}
        header_env = tuple(
            (k, ref.group(1)) for k, v in p.headers.items() if (ref := ENV_REF.fullmatch(v)) is not None
        )
        seen_models: set[str] = set()
        for j, m in enumerate(p.models):
            mpath = f"{path}.models[{j}]"
            if m.id in seen_models:
                problems.append(f"{mpath}.id: duplicate model id '{m.id}' in provider '{p.id}'")
            seen_models.add(m.id)
            if m.slots is not None and not p.self_hosted:
                problems.append(
                    f"{mpath}.slots: only self-hosted providers (vllm, openai-compatible) have slots"
                )
            if m.queue is not None and m.slots is None:
                problems.append(f"{mpath}.queue: needs slots")
            for k, fb in enumerate(m.fallbacks):
                if fb == m.id:
                    problems.append(f"{mpath}.fallbacks[{k}]: a model cannot fall back to itself")
                elif fb not in all_models:
                    problems.append(f"{mpath}.fallbacks[{k}]: unknown model '{fb}'")
            if known_image_rules is not None and m.image_tokens and m.image_tokens not in known_image_rules:
                problems.append(
                    f"{mpath}.image_tokens: unknown rule '{m.image_tokens}' "
                    f"(one of {', '.join(sorted(known_image_rules))})"
                )
            price = _resolve_price(p, m, mpath, currency, problems)
            if price is None:
                continue
            priority = m.priority if m.priority is not None else (p.priority if p.priority is not None else i)
            health = p.health_check if p.health_check is not None else p.self_hosted
            for r, url in enumerate(urls):
                endpoint_id = p.id if len(urls) == 1 else f"{p.id}#{r}"
                metrics_url = None
                if p.type == "vllm":
                    metrics_url = p.metrics_url if (p.metrics_url and r == 0) else default_metrics_url(url)
                elif p.metrics_url and r == 0:
                    metrics_url = p.metrics_url
                out.append(
                    DeploymentConfig(
                        id=f"{endpoint_id}/{m.id}",
                        provider_id=p.id,
                        provider_type=p.type,
                        endpoint_id=endpoint_id,
                        base_url=url,
                        api_key_env=p.api_key_env,
                        headers=literal_headers,
                        header_env=header_env,
                        model_id=m.id,
                        upstream=m.upstream_name,
                        vision=m.vision,
                        max_output_tokens=m.max_output_tokens,
                        image_tokens=m.image_tokens,
                        price=price,
                        priority=priority,
                        order=order,
                        fallbacks=tuple(m.fallbacks),
                        timeouts=p.timeouts,
                        health_check=health,
                        metrics_url=metrics_url,
                        probe_key_env=p.api_key_env if _same_host(metrics_url, url) else None,
                        stream_usage=p.stream_usage,
                        slots=m.slots,
                        queue=m.queue_config,
                    )
                )
                order += 1
    if problems:
        raise ConfigError(problems)
    return out
