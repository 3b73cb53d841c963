"""Providers, models and prices: read by anyone with a role over units, changed by institution admins only.

Prices are integers: micro-units of the institution's currency per 1M tokens
(0.05 USD/Mtok == 50_000). A model without a price takes the provider's list
price where one is known (cloud providers); self-hosted models must be priced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlmodel import col, select

from admin_api.catalog_edit import current_configs, save_configs
from admin_api.context import Ctx, reader, writer
from admin_api.errors import forbidden, invalid, not_found
from admin_api.ids import MODEL_ID, ProviderId
from core.models import ModelOffer, Provider
from core.money import from_micro
from providers.config import (
    ContractConfig,
    LimitsConfig,
    ModelConfig,
    PriceConfig,
    ProviderConfig,
    ProviderType,
    QueueConfig,
    TimeoutConfig,
)
from providers.images import RULES as IMAGE_RULES
from providers.upstream_policy import HEADER_NAME, HEADER_VALUE, MAX_HEADERS, redact_headers

router = APIRouter(tags=["catalog"])

T = TypeVar("T")
URL = r"^https?://[A-Za-z0-9.\-_\[\]:@]+(/[\x21-\x7e]*)?$"

MAX_PRICE = 10**12  # a million currency units per 1M tokens: far above any real price
HeaderName = Annotated[str, Field(pattern=HEADER_NAME)]
HeaderValue = Annotated[str, Field(pattern=HEADER_VALUE)]
ModelPath = Annotated[str, Path(pattern=MODEL_ID, description="model id (may contain '/')")]


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_mtok: int = Field(ge=0, le=MAX_PRICE, description="micro-units per 1M input tokens")
    output_per_mtok: int = Field(ge=0, le=MAX_PRICE, description="micro-units per 1M output tokens")
    cached_input_per_mtok: int | None = Field(default=None, ge=0, le=MAX_PRICE)


class ProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ProviderType
    base_url: str | None = Field(default=None, pattern=URL, max_length=2000)
    replicas: list[Annotated[str, Field(pattern=URL, max_length=2000)]] = Field(
        default_factory=list, max_length=64
    )
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    health_check: bool | None = None
    metrics_url: str | None = Field(default=None, pattern=URL, max_length=2000)
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict, max_length=MAX_HEADERS)
    limits: LimitsConfig | None = Field(
        default=None, description="the contract's rate limits, institution-wide"
    )
    contract: ContractConfig | None = Field(
        default=None, description="committed-spend ceiling per month or year"
    )


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upstream: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")
    vision: bool = False
    price: PriceIn | None = Field(default=None, description="null: the provider's list price (cloud only)")
    max_output_tokens: int | None = Field(default=None, gt=0, le=10_000_000)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    fallbacks: list[Annotated[str, Field(pattern=MODEL_ID)]] = Field(default_factory=list, max_length=16)
    image_tokens: str | None = Field(default=None, max_length=64, description="how an image counts (vision)")
    slots: int | None = Field(default=None, ge=1, le=100_000, description="self-hosted: concurrent requests")
    queue: QueueConfig | None = Field(default=None, description="how requests wait for a slot (needs slots)")
    limits: LimitsConfig | None = None
    contract: ContractConfig | None = None

    @field_validator("image_tokens")
    @classmethod
    def _known_image_rule(cls, value: str | None) -> str | None:
        if value is not None and value not in IMAGE_RULES:
            raise ValueError(f"unknown image rule '{value}' (one of {', '.join(sorted(IMAGE_RULES))})")
        return value


class OfferOut(BaseModel):
    id: str
    provider_id: str
    upstream: str
    vision: bool
    max_output_tokens: int
    input_per_mtok: int
    output_per_mtok: int
    cached_input_per_mtok: int | None
    price_source: str  # contract (set by the institution) | default (list price)
    # Every other setting a model PUT takes, so a client that edits one part can send the rest back as it was
    priority: int | None = None
    fallbacks: list[str] = Field(default_factory=list)
    image_tokens: str | None = None
    slots: int | None = None
    queue: QueueConfig | None = None
    limits: LimitsConfig | None = None
    contract: ContractConfig | None = None


class ProviderOut(BaseModel):
    id: str
    type: str
    base_url: str
    api_key_env: str | None
    options: dict[str, Any]
    models: list[OfferOut]


def _offer(o: ModelOffer) -> OfferOut:
    return OfferOut(id=o.id, provider_id=o.provider_id, upstream=o.upstream, vision=o.vision,
                    max_output_tokens=o.max_output_tokens, input_per_mtok=o.input_price,
                    output_per_mtok=o.output_price, cached_input_per_mtok=o.cached_input_price,
                    price_source=o.price_source, priority=o.options.get("priority"),
                    fallbacks=o.options.get("fallbacks") or [], image_tokens=o.options.get("image_tokens"),
                    slots=o.options.get("slots"), queue=o.options.get("queue"),
                    limits=o.options.get("limits"), contract=o.options.get("contract"))  # fmt: skip


async def _offers(ctx: Ctx) -> list[ModelOffer]:
    stmt = select(ModelOffer).where(ModelOffer.institution_id == ctx.institution_id)
    return list((await ctx.session.execute(stmt.order_by(col(ModelOffer.position)))).scalars().all())


async def _providers(ctx: Ctx) -> list[ProviderOut]:
    stmt = (
        select(Provider).where(Provider.institution_id == ctx.institution_id).order_by(col(Provider.position))
    )
    offers = await _offers(ctx)
    return [
        ProviderOut(
            id=p.id,
            type=p.type,
            base_url=p.base_url,
            api_key_env=p.api_key_env,
            options=redact_headers(p.options),
            models=[_offer(o) for o in offers if o.provider_id == p.id],
        )
        for p in (await ctx.session.execute(stmt)).scalars().all()
    ]


def _readable(ctx: Ctx) -> None:
    ctx.access.require(ctx.access.can_read_catalog(), "the catalog is for admins, finance and auditors")


def _institution_admin(ctx: Ctx) -> None:
    if not ctx.access.institution_admin:
        raise forbidden("only institution admins manage providers, models and prices")


def _model_config(model_id: str, body: ModelIn) -> ModelConfig:
    price = None
    if body.price is not None:
        cached = body.price.cached_input_per_mtok
        price = PriceConfig(input_per_mtok=from_micro(body.price.input_per_mtok),
                            output_per_mtok=from_micro(body.price.output_per_mtok),
                            cached_input_per_mtok=from_micro(cached) if cached is not None else None)  # fmt: skip
    return ModelConfig(id=model_id, upstream=body.upstream, vision=body.vision, price=price,
                       max_output_tokens=body.max_output_tokens, priority=body.priority,
                       fallbacks=body.fallbacks, image_tokens=body.image_tokens, slots=body.slots, queue=body.queue,
                       limits=body.limits,
                       contract=body.contract)  # fmt: skip


def _checked(build: Callable[[], T]) -> T:
    """The router's own config models have the last word (their URL and name checks differ in detail)."""
    try:
        return build()
    except ValidationError as exc:
        problems = [{"path": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise invalid("the provider configuration is not valid", problems, code="provider_config") from None


def _provider_index(configs: list[ProviderConfig], provider_id: str) -> int:
    for i, p in enumerate(configs):
        if p.id == provider_id:
            return i
    raise not_found("provider", provider_id)


@router.get("/providers", response_model=list[ProviderOut], summary="Providers with their models and prices")
async def list_providers(ctx: Ctx = Depends(reader("org:read"))) -> list[ProviderOut]:
    _readable(ctx)
    return await _providers(ctx)


@router.get("/models", response_model=list[OfferOut], summary="The model catalog with prices")
async def list_models(ctx: Ctx = Depends(reader("org:read"))) -> list[OfferOut]:
    _readable(ctx)
    return [_offer(o) for o in await _offers(ctx)]


@router.put("/providers/{provider_id}", response_model=ProviderOut, summary="Create or change a provider")
async def put_provider(
    provider_id: ProviderId, body: ProviderIn, ctx: Ctx = Depends(writer("org:write"))
) -> ProviderOut:
    """Its models are kept; change them with the model routes."""
    _institution_admin(ctx)
    configs = await current_configs(ctx)
    i = next((j for j, p in enumerate(configs) if p.id == provider_id), len(configs))
    models = configs[i].models if i < len(configs) else []
    new = _checked(
        lambda: ProviderConfig(id=provider_id, models=models, **body.model_dump(exclude_none=True))
    )
    configs[i : i + 1] = [new]
    await save_configs(ctx, configs, "provider")
    await ctx.commit()
    return next(p for p in await _providers(ctx) if p.id == provider_id)


@router.delete("/providers/{provider_id}", status_code=204, summary="Remove a provider and its models")
async def delete_provider(provider_id: ProviderId, ctx: Ctx = Depends(writer("org:write"))) -> Response:
    _institution_admin(ctx)
    configs = await current_configs(ctx)
    del configs[_provider_index(configs, provider_id)]
    await save_configs(ctx, configs, "provider")
    await ctx.commit()
    return Response(status_code=204)


@router.put(
    "/providers/{provider_id}/models/{model_id:path}",
    response_model=OfferOut,
    summary="Create or change a model of a provider, with its price",
)
async def put_model(
    provider_id: ProviderId, model_id: ModelPath, body: ModelIn, ctx: Ctx = Depends(writer("org:write"))
) -> OfferOut:
    _institution_admin(ctx)
    configs = await current_configs(ctx)
    i = _provider_index(configs, provider_id)
    models = [m for m in configs[i].models if m.id != model_id]
    position = next((j for j, m in enumerate(configs[i].models) if m.id == model_id), len(models))
    models.insert(position, _checked(lambda: _model_config(model_id, body)))
    configs[i] = configs[i].model_copy(update={"models": models})
    await save_configs(ctx, configs, "model")
    await ctx.commit()
    return next(_offer(o) for o in await _offers(ctx) if o.provider_id == provider_id and o.id == model_id)


@router.delete("/providers/{provider_id}/models/{model_id:path}", status_code=204, summary="Remove a model")
async def delete_model(
    provider_id: ProviderId, model_id: ModelPath, ctx: Ctx = Depends(writer("org:write"))
) -> Response:
    _institution_admin(ctx)
    configs = await current_configs(ctx)
    i = _provider_index(configs, provider_id)
    if not any(m.id == model_id for m in configs[i].models):
        raise not_found("model", model_id)
    configs[i] = configs[i].model_copy(update={"models": [m for m in configs[i].models if m.id != model_id]})
    await save_configs(ctx, configs, "model")
    await ctx.commit()
    return Response(status_code=204)
