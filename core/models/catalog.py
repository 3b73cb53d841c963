"""Where models come from and what they cost: the config `providers/` compiles into a router."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKeyConstraint
from sqlmodel import Field, SQLModel


class Provider(SQLModel, table=True):
    __table_args__ = (ForeignKeyConstraint(["institution_id"], ["institution.id"], ondelete="CASCADE"),)

    institution_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=32)
    base_url: str
    api_key_env: str | None = None  # the secret itself stays in the environment
    position: int = 0
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


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
