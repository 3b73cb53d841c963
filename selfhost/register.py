"""Discovering what a running vLLM or OpenAI-compatible server serves, to write its `providers:` entry."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp

from providers.metrics import parse_vllm_metrics
from selfhost.catalogue import load_catalogue


class RegisterError(RuntimeError):
    """The server could not be reached or did not answer /v1/models like an OpenAI-compatible one."""


@dataclass(frozen=True)
class DiscoveredModel:
    id: str
    """The name the server serves it under (the `upstream` in the org file)."""
    base_url: str
    server_kind: str
    """"vllm" when the server exposes vLLM's /metrics, else "openai-compatible"."""
    owned_by: str | None
    max_model_len: int | None
    catalogue_id: str | None
    vision: bool
    image_tokens: str | None
    stream_usage: str | None = None
    """"reported" / "counted" when probed (register(..., probe_stream_usage=True)), else None."""

    def model_entry(
        self, input_per_mtok: Decimal | float, output_per_mtok: Decimal | float
    ) -> dict[str, Any]:
        """A `models:` item for the org file, with the internal price the institution chose."""
        entry: dict[str, Any] = {
            "id": self.catalogue_id or self.id.split("/")[-1].lower(),
            "upstream": self.id,
            "vision": self.vision,
            "price": {"input_per_mtok": float(input_per_mtok), "output_per_mtok": float(output_per_mtok)},
        }
        if self.max_model_len:
            entry["max_output_tokens"] = min(4096, self.max_model_len // 2)
        if self.image_tokens:
            entry["image_tokens"] = self.image_tokens
        return entry


def v1_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


async def _reports_stream_usage(
    s: aiohttp.ClientSession,
    base: str,
    model: str,
    headers: dict[str, str],
    client_timeout: aiohttp.ClientTimeout,
) -> bool:
    """One 1-token streamed chat: does the server put usage in streams when asked?"""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with s.post(base + "/chat/completions", json=body, headers=headers, timeout=client_timeout) as r:
        if r.status != 200:
            raise RegisterError(f"{base}/chat/completions answered HTTP {r.status}: {(await r.text())[:200]}")
        return b'"usage":{' in (await r.read()).replace(b" ", b"")


async def register(
    url: str,
    *,
    api_key: str | None = None,
    request_timeout: float = 5.0,
    probe_stream_usage: bool = False,
    session: aiohttp.ClientSession | None = None,
) -> list[DiscoveredModel]:
    """Read `url`'s /v1/models (and /metrics, to tell vLLM apart) and match each model to the catalogue.

    `probe_stream_usage` also sends each model a 1-token streamed chat to learn
    whether the server reports usage in streams; servers that do not (e.g.
    llama-cpp-python) need `stream_usage: counted` in their provider entry.
    """
    base = v1_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    own = session is None
    s = session or aiohttp.ClientSession()
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    try:
        try:
            async with s.get(base + "/models", headers=headers, timeout=client_timeout) as r:
                if r.status != 200:
                    raise RegisterError(f"{base}/models answered HTTP {r.status}: {(await r.text())[:200]}")
                listing = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegisterError(f"cannot reach {base}/models: {exc or type(exc).__name__}") from exc
        kind = "openai-compatible"
        try:
            async with s.get(base[: -len("/v1")] + "/metrics", timeout=client_timeout) as r:
                if r.status == 200 and parse_vllm_metrics(await r.text()) is not None:
                    kind = "vllm"
        except (aiohttp.ClientError, TimeoutError):
            pass
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise RegisterError(f"{base}/models did not return an OpenAI model list")
        probed: dict[str, bool] = {}
        if probe_stream_usage:
            for item in data:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    try:
                        probed[item["id"]] = await _reports_stream_usage(
                            s,
                            base,
                            item["id"],
                            headers,
                            aiohttp.ClientTimeout(total=max(request_timeout, 30)),
                        )
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        raise RegisterError(
                            f"probing {item['id']} failed: {exc or type(exc).__name__}"
                        ) from exc
    finally:
        if own:
            await s.close()
    cat = load_catalogue()
    out: list[DiscoveredModel] = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        entry = cat.match(item["id"]) or (
            cat.match(item["root"]) if isinstance(item.get("root"), str) else None
        )
        max_len = item.get("max_model_len")
        out.append(
            DiscoveredModel(
                id=item["id"],
                base_url=base,
                server_kind=kind,
                owned_by=item.get("owned_by"),
                max_model_len=max_len if isinstance(max_len, int) else None,
                catalogue_id=entry.id if entry else None,
                vision=entry.vision if entry else False,
                image_tokens=entry.image_tokens.rule if entry and entry.image_tokens else None,
                stream_usage=None
                if item["id"] not in probed
                else ("reported" if probed[item["id"]] else "counted"),
            )
        )
    return out


def provider_entry(
    provider_id: str,
    models: list[DiscoveredModel],
    *,
    input_per_mtok: Decimal | float,
    output_per_mtok: Decimal | float,
    api_key_env: str | None = None,
) -> dict[str, Any]:
    """A whole `providers:` item for the discovered server (one base_url), ready to paste into the org file."""
    if not models:
        raise RegisterError("the server serves no models")
    entry: dict[str, Any] = {
        "id": provider_id,
        "type": "vllm" if models[0].server_kind == "vllm" else "openai-compatible",
        "base_url": models[0].base_url,
        "models": [m.model_entry(input_per_mtok, output_per_mtok) for m in models],
    }
    if api_key_env:
        entry["api_key_env"] = api_key_env
    if any(m.stream_usage == "counted" for m in models):
        entry["stream_usage"] = "counted"
    return entry
