"""The catalogue of recommended open-weight models (catalogue.yaml) as typed objects."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from providers.images import RULES, ImageRule, qwen2_vl_rule


class CatalogueError(ValueError):
    """An unknown model or GPU name; the message lists the known ones."""


class ImageTokenSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    rule: str

    def build(self) -> ImageRule:
        """The providers.images rule with this model's parameters (Qwen2-VL's pixel bounds)."""
        extra: dict[str, Any] = self.model_extra or {}
        if self.rule == "qwen2-vl" and extra:
            return qwen2_vl_rule(int(extra.get("min_pixels", 3136)), int(extra.get("max_pixels", 12_845_056)))
        return RULES[self.rule]


class CatalogueModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    hf_repo: str
    kind: Literal["chat", "vision", "reasoning"]
    params_b: float
    weights_gb: float
    gpu_memory_gb: float
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float = Field(gt=0, le=1)
    tensor_parallel_size: int = 1
    limit_mm_per_prompt: dict[str, int] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None
    extra_args: tuple[str, ...] = ()
    image_tokens: ImageTokenSpec | None = None
    notes: str = ""

    @property
    def vision(self) -> bool:
        return self.kind == "vision"


class Gpu(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_gb: float
    bandwidth_gbs: float
    bf16: bool


class Catalogue(BaseModel):
    models: list[CatalogueModel]
    gpus: dict[str, Gpu]

    def model(self, model_id: str) -> CatalogueModel:
        for m in self.models:
            if m.id == model_id or m.hf_repo.lower() == model_id.lower():
                return m
        raise CatalogueError(f"unknown model '{model_id}'; the catalogue has: {', '.join(self.ids())}")

    def gpu(self, name: str) -> Gpu:
        for k, g in self.gpus.items():
            if k.lower() == name.lower():
                return g
        raise CatalogueError(f"unknown GPU '{name}'; known: {', '.join(self.gpus)}")

    def ids(self) -> list[str]:
        return [m.id for m in self.models]

    def match(self, served_name: str) -> CatalogueModel | None:
        """The entry a server's model name refers to (catalogue id or Hugging Face repo), if any."""
        name = served_name.lower()
        for m in self.models:
            if name in (m.id.lower(), m.hf_repo.lower()) or name.endswith(
                "/" + m.hf_repo.lower().split("/")[-1]
            ):
                return m
        return None


@lru_cache(maxsize=1)
def load_catalogue() -> Catalogue:
    text = resources.files("selfhost").joinpath("catalogue.yaml").read_text()
    return Catalogue.model_validate(yaml.safe_load(text))
