"""Where models come from and what they cost: the config `providers/` compiles into a router."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKeyConstraint
from sqlmodel import Field, SQLModel

from core.money import from_micro


class Provider(SQLModel, table=True):
    __table_args__ = (ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),)

    institution_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=32)
    base_url: str
    api_key_env: str | None = None  # the secret itself stays in the environment
    position: int = 0
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))

    def to_config(self, offers: list[ModelOffer], *, default_prices: bool) -> dict[str, Any]:
        """The provider as the institution file's `providers:` entry (the router's config shape)."""
        doc: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.base_url:
            doc["base_url"] = self.base_url
        if self.api_key_env:
            doc["api_key_env"] = self.api_key_env
        models = [o.to_config(with_price=default_prices or o.price_source == "contract") for o in offers]
        return {**doc, **self.options, "models": models}


class ModelOffer(SQLModel, table=True):
    """A model id offered by one provider. The same id under several providers is a fallback chain,
    tried in `position` order; the price is the one of the deployment that served."""

    __tablename__ = "model_offer"
    __table_args__ = (
        ForeignKeyConstraint(
            ["institution_id", "provider_id"], ["provider.institution_id", "provider.id"], ondelete="CASCADE"
        ),
    )

    institution_id: str = Field(primary_key=True, max_length=64)
    provider_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=128)
    upstream: str
    vision: bool = False
    max_output_tokens: int = 4096
    # Prices in integer micro-units of the institution's currency per 1M tokens.
    input_price: int = Field(sa_column=Column(BigInteger, nullable=False))
    output_price: int = Field(sa_column=Column(BigInteger, nullable=False))
    cached_input_price: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # "contract" when the institution set the price, "default" when it came from the bundled price map.
    price_source: str = Field(default="contract", max_length=16)
    position: int = 0
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))

    def to_config(self, *, with_price: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "upstream": self.upstream, "vision": self.vision,
                               "max_output_tokens": self.max_output_tokens}  # fmt: skip
        if with_price:
            price: dict[str, Any] = {"input_per_mtok": from_micro(self.input_price),
                                     "output_per_mtok": from_micro(self.output_price)}  # fmt: skip
            if self.cached_input_price is not None:
                price["cached_input_per_mtok"] = from_micro(self.cached_input_price)
            doc["price"] = price
        return {**doc, **self.options}
