"""Image token counts for budget estimates, per model family.

The gateway reserves budget before the upstream reports usage, so every
rule here errs high where the family's real rule is not known exactly:
overestimates are refunded at settlement, underestimates are not.

Rules (`RULES` by name; `rule_for_model` guesses from the upstream name):
- openai-tile (GPT-4o, GPT-4.1, o-series): detail=low -> 85; otherwise fit in
  2048x2048, scale the shortest side down to 768, 170 per 512px tile + 85.
- openai-tile-mini (gpt-4o-mini): the same tiling at 2833 + 5667 per tile.
- qwen2-vl (Qwen2-VL / Qwen2.5-VL, and the demo server): sides rounded to
  multiples of 28 inside [min_pixels, max_pixels], one token per 28x28 patch
  (2x2 merged 14px patches) + 2 vision start/end tokens.
- internvl (InternVL2/3): 448px tiles chosen by closest aspect ratio, up to
  max_num (12), plus a thumbnail tile when more than one; 256 tokens a tile.
- mllama (Llama-3.2-Vision): up to 4 560px tiles of 1601 positions each;
  conservative, since vLLM reports only the text-side tokens.
- molmo (Molmo-7B-D): up to 12 336px crops plus the global view, 169 tokens
  each (144 pooled patches + column tokens); conservative.
- anthropic: ceil(w*h/750) after resizing to a 1568px long edge and ~1.15 MP.
- gemini: 258 when both sides <= 384, else fit in 3072x3072 and 258 per 768x768 tile.
- conservative: any other family: a flat 2048 tokens per image.
When only a URL is known (https) and the caller gives no size, the rule's
worst case is used.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from providers.dataurl import decode_data_url
from providers.errors import ImageTooLarge, InvalidRequest, MalformedImage

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
_ALLOWED_MIME = frozenset({"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp"})


@dataclass(frozen=True, slots=True)
class ImageRule:
    name: str
    count: Callable[[int, int, str], int]
    worst_case: Callable[[str], int]


def _openai_tiles(w: int, h: int) -> int:
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = math.floor(w * s), math.floor(h * s)
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = math.floor(w * s), math.floor(h * s)
    return math.ceil(w / 512) * math.ceil(h / 512)


def _openai(base: int, tile: int) -> ImageRule:
    def count(w: int, h: int, detail: str) -> int:
        return base if detail == "low" else base + tile * _openai_tiles(w, h)

    def worst(detail: str) -> int:
        return base if detail == "low" else base + tile * _openai_tiles(768, 2048)

    return ImageRule("openai-tile" if base == 85 else "openai-tile-mini", count, worst)


def qwen2_vl_grid(w: int, h: int, min_pixels: int = 3136, max_pixels: int = 12_845_056) -> tuple[int, int]:
    """Qwen2-VL's smart_resize: (height, width) in multiples of 28 inside the pixel bounds."""
    f = 28
    if max(w, h) / max(1, min(w, h)) > 200:
        raise MalformedImage("image aspect ratio is above 200:1, which Qwen2-VL refuses")
    hb, wb = max(f, round(h / f) * f), max(f, round(w / f) * f)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = max(f, math.floor(h / beta / f) * f), max(f, math.floor(w / beta / f) * f)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / f) * f, math.ceil(w * beta / f) * f
    return hb, wb


def qwen2_vl_rule(min_pixels: int = 3136, max_pixels: int = 12_845_056, name: str = "qwen2-vl") -> ImageRule:
    def count(w: int, h: int, detail: str) -> int:
        hb, wb = qwen2_vl_grid(w, h, min_pixels, max_pixels)
        return (hb // 28) * (wb // 28) + 2

    return ImageRule(name, count, lambda detail: max_pixels // 784 + 2)


def _internvl(max_num: int = 12, tile: int = 448, per_tile: int = 256) -> ImageRule:
    ratios = sorted(
        {
            (i, j)
            for n in range(1, max_num + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if i * j <= max_num
        },
        key=lambda r: r[0] * r[1],
    )

    def count(w: int, h: int, detail: str) -> int:
        aspect = w / h
        best, best_diff, area = (1, 1), float("inf"), w * h
        for i, j in ratios:
            diff = abs(aspect - i / j)
            if diff < best_diff or (diff == best_diff and area > 0.5 * tile * tile * i * j):
                best, best_diff = (i, j), diff
        tiles = best[0] * best[1]
        return per_tile * (tiles + (1 if tiles > 1 else 0))

    return ImageRule("internvl", count, lambda detail: per_tile * (max_num + 1))


def _tiled(name: str, tile: int, max_tiles: int, per_tile: int, extra_tiles: int = 0) -> ImageRule:
    def count(w: int, h: int, detail: str) -> int:
        tiles = min(max_tiles, math.ceil(w / tile) * math.ceil(h / tile))
        return per_tile * (tiles + extra_tiles)

    return ImageRule(name, count, lambda detail: per_tile * (max_tiles + extra_tiles))


def _anthropic() -> ImageRule:
    def count(w: int, h: int, detail: str) -> int:
        s = min(1.0, 1568 / max(w, h), math.sqrt(1_150_000 / (w * h)))
        return min(1600, math.ceil((w * s) * (h * s) / 750))

    return ImageRule("anthropic", count, lambda detail: 1600)


def _gemini() -> ImageRule:
    def count(w: int, h: int, detail: str) -> int:
        if w <= 384 and h <= 384:
            return 258
        s = min(1.0, 3072 / max(w, h))  # Gemini scales images to fit 3072x3072 first
        return 258 * math.ceil(math.floor(w * s) / 768) * math.ceil(math.floor(h * s) / 768)

    return ImageRule("gemini", count, lambda detail: 258 * 16)


RULES: dict[str, ImageRule] = {
    r.name: r
    for r in (
        _openai(85, 170),
        _openai(2833, 5667),
        qwen2_vl_rule(),
        _internvl(),
        _tiled("mllama", 560, 4, 1601),
        _tiled("molmo", 336, 12, 169, extra_tiles=1),
        _anthropic(),
        _gemini(),
        ImageRule("conservative", lambda w, h, d: 2048, lambda d: 2048),
    )
}


def rule_for_model(upstream: str) -> str:
    """The rule name for a model, guessed from its upstream name ('conservative' when unknown)."""
    n = upstream.lower()
    if "gpt-4o-mini" in n:
        return "openai-tile-mini"
    if n.startswith(("gpt-4", "gpt-5", "o1", "o3", "o4", "chatgpt")):
        return "openai-tile"
    if ("qwen" in n and "vl" in n) or "demo" in n:
        return "qwen2-vl"
    if "internvl" in n:
        return "internvl"
    if "llama-3.2" in n and "vision" in n:
        return "mllama"
    if "molmo" in n:
        return "molmo"
    if "claude" in n:
        return "anthropic"
    if "gemini" in n:
        return "gemini"
    return "conservative"


# The content part types the gateway forwards to the providers it passes bodies through to (the OpenAI
# wire: OpenAI, vLLM and the other OpenAI-compatible types). The budget estimate counts text by its bytes
# and `image_url` parts by the model family's image rule; any other part (`input_audio`, `audio_url`,
# `video_url`, `file`, `input_image`, or one without a type, which vLLM infers from its keys) would reach
# the model uncounted, and a self-hosted server would fetch its link from inside the campus network, so it
# is refused with a 400 naming it. Anthropic and Gemini bodies are built part by part from text and
# `image_url` parts only (providers/adapters/base.py `content_parts` refuses any other type the same way).
FORWARDED_PARTS: dict[str, frozenset[str]] = dict.fromkeys(
    ("openai", "openai-compatible", "vllm", "together", "groq", "mistral", "deepseek"),
    frozenset({"text", "image_url", "refusal"}),
)
REMOTE_IMAGE_REFUSED = (
    "this model runs on the institution's own servers, which take images only inline: send the image as a "
    "data: URL (data:image/png;base64,...), not as a link"
)


def check_content_parts(body: Mapping[str, Any], provider_type: str, self_hosted: bool) -> None:
    """Raise InvalidRequest for a message part the gateway does not forward to `provider_type`, and, for a
    self-hosted model, for an image given as a link rather than inline (a data: URL).

    Self-hosted model servers (vLLM) fetch links themselves, from inside the campus network (a student's
    `http://169.254.169.254/...` reached the metadata service through them); fetching in the gateway
    instead would make it the SSRF-exposed fetcher and put a download on the request path. Commercial
    providers fetch links from their own networks and keep getting them. Runs on every request sent to a
    provider (`type(x) is dict` first: the body is parsed JSON)."""
    allowed = FORWARDED_PARTS[provider_type]
    for m in body.get("messages") or ():
        content = m.get("content") if type(m) is dict or isinstance(m, Mapping) else None
        if content is None or type(content) is str:
            continue
        if type(content) is not list:
            raise InvalidRequest("message content must be a string or a list of parts")
        for part in content:
            kind = part.get("type") if type(part) is dict or isinstance(part, Mapping) else None
            if kind not in allowed:
                raise InvalidRequest(
                    f"content part type '{kind}' is not accepted for this model; parts may be: "
                    + ", ".join(sorted(allowed))
                )
            if kind == "image_url" and self_hosted:
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, Mapping) else image
                if not (isinstance(url, str) and url.startswith("data:")):
                    raise InvalidRequest(REMOTE_IMAGE_REFUSED)


@dataclass(frozen=True, slots=True)
class ImageRef:
    url: str
    detail: str


def iter_images(body: Mapping[str, Any]) -> Iterator[ImageRef]:
    """Every image_url part in a chat body's messages."""
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, Mapping) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "image_url":
                continue
            image = part.get("image_url")
            if isinstance(image, Mapping):
                url, detail = image.get("url"), image.get("detail") or "auto"
            else:
                url, detail = image, "auto"
            if not isinstance(url, str) or not url:
                raise MalformedImage("image_url part has no url")
            if detail not in ("low", "high", "auto"):
                raise MalformedImage(f"image_url.detail must be low, high or auto, not '{detail}'")
            yield ImageRef(url, str(detail))


def data_url_size(
    url: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """(width, height) of a data: URL image, reading only its header with Pillow."""
    from PIL import Image, UnidentifiedImageError

    mime, raw = decode_data_url(url, max_bytes)
    if mime.lower() not in _ALLOWED_MIME:
        raise MalformedImage(f"image type '{mime}' is not supported (png, jpeg, gif, webp)")
    if len(raw) > max_bytes:
        raise ImageTooLarge(f"image is {len(raw)} bytes, above the {max_bytes} byte limit")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            w, h = img.size
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image has more than {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise MalformedImage("image data could not be read as an image") from None
    if w <= 0 or h <= 0:
        raise MalformedImage("image has no pixels")
    if w * h > max_pixels:
        raise ImageTooLarge(f"image is {w}x{h}, above the {max_pixels} pixel limit")
    return w, h


@dataclass(frozen=True, slots=True)
class ImageTokens:
    total: int
    per_image: tuple[int, ...]


def count_image_tokens(
    body: Mapping[str, Any],
    rule: str | ImageRule,
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImageTokens:
    """Tokens the images in a chat body will cost under `rule`.

    data: URLs are measured; http(s) URLs use `sizes[url]` when the caller
    knows it, else the rule's worst case. Raises MalformedImage / ImageTooLarge.
    """
    r = rule if isinstance(rule, ImageRule) else RULES.get(rule) or RULES["conservative"]
    counts: list[int] = []
    for ref in iter_images(body):
        if ref.url.startswith("data:"):
            w, h = data_url_size(ref.url, max_bytes, max_pixels)
            counts.append(r.count(w, h, ref.detail))
        elif ref.url.startswith(("https://", "http://")):
            size = sizes.get(ref.url) if sizes else None
            counts.append(r.count(size[0], size[1], ref.detail) if size else r.worst_case(ref.detail))
        else:
            raise MalformedImage("image url must be https:// or a data: URL")
    return ImageTokens(sum(counts), tuple(counts))
