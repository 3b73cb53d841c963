"""Image token counts per family, and refusing images the gateway must answer 400 for."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers import ImageTooLarge, MalformedImage, count_image_tokens, rule_for_model
from providers.images import RULES, qwen2_vl_grid, qwen2_vl_rule
from tests.providers.wire import png_data_url


def body(*urls: str, detail: str | None = None) -> dict[str, object]:
    parts: list[dict[str, object]] = [{"type": "text", "text": "look"}]
    for u in urls:
        image: dict[str, str] = {"url": u}
        if detail:
            image["detail"] = detail
        parts.append({"type": "image_url", "image_url": image})
    return {"messages": [{"role": "user", "content": parts}]}


@pytest.mark.parametrize(
    ("w", "h", "tokens"),
    [
        (1024, 1024, 765),  # OpenAI's documented example: 768x768 -> 4 tiles
        (2048, 4096, 1105),  # 1024x2048 -> 768x1536 -> 6 tiles
        (512, 512, 255),
        (100, 100, 255),
    ],
)
def test_openai_tile_rule(w: int, h: int, tokens: int) -> None:
    assert RULES["openai-tile"].count(w, h, "high") == tokens
    assert RULES["openai-tile"].count(w, h, "low") == 85


def test_openai_rule_on_real_data_urls_and_detail_low() -> None:
    url = png_data_url(1024, 1024)
    assert count_image_tokens(body(url), "openai-tile").per_image == (765,)
    assert count_image_tokens(body(url, url, detail="low"), "openai-tile").total == 170
    assert count_image_tokens(body(url), "openai-tile-mini").total == 2833 + 4 * 5667


def test_qwen2_vl_patches_and_pixel_bounds() -> None:
    assert qwen2_vl_grid(640, 480) == (476, 644)
    assert RULES["qwen2-vl"].count(640, 480, "auto") == (476 // 28) * (644 // 28) + 2
    assert RULES["qwen2-vl"].count(10, 10, "auto") == 4 + 2  # lifted to min_pixels: 56x56
    capped = qwen2_vl_rule(max_pixels=1280 * 28 * 28)
    assert capped.count(4000, 3000, "auto") <= 1280 + 2
    assert capped.worst_case("auto") == 1282


@given(st.integers(1, 8000), st.integers(1, 8000))
def test_counts_never_exceed_the_unknown_size_worst_case(w: int, h: int) -> None:
    if max(w, h) / min(w, h) > 200:
        return
    for name, rule in RULES.items():
        for detail in ("low", "high", "auto"):
            assert 0 < rule.count(w, h, detail) <= rule.worst_case(detail), (name, w, h, detail)


@given(st.integers(28, 6000), st.integers(28, 6000))
def test_qwen_grid_stays_in_bounds_and_multiples_of_28(w: int, h: int) -> None:
    if max(w, h) / min(w, h) > 200:
        return
    hb, wb = qwen2_vl_grid(w, h, 3136, 1003520)
    assert hb % 28 == 0 and wb % 28 == 0
    assert 3136 <= hb * wb <= 1003520


def test_remote_images_use_given_sizes_or_the_worst_case() -> None:
    url = "https://example.edu/photo.jpg"
    assert count_image_tokens(body(url), "openai-tile", sizes={url: (512, 512)}).total == 255
    assert count_image_tokens(body(url), "openai-tile").total == RULES["openai-tile"].worst_case("high")
    assert count_image_tokens(body(url), "conservative").total == 2048


def test_rule_detection_from_upstream_names() -> None:
    assert rule_for_model("gpt-4o-2024-08-06") == "openai-tile"
    assert rule_for_model("gpt-4o-mini") == "openai-tile-mini"
    assert rule_for_model("Qwen/Qwen2-VL-7B-Instruct") == "qwen2-vl"
    assert rule_for_model("OpenGVLab/InternVL3-8B") == "internvl"
    assert rule_for_model("meta-llama/Llama-3.2-11B-Vision-Instruct") == "mllama"
    assert rule_for_model("allenai/Molmo-7B-D-0924") == "molmo"
    assert rule_for_model("claude-sonnet-4-5") == "anthropic"
    assert rule_for_model("gemini-2.5-flash") == "gemini"
    assert rule_for_model("some/other-model") == "conservative"


@pytest.mark.parametrize(
    ("url", "error", "text"),
    [
        ("data:image/png;base64,!!!notbase64", MalformedImage, "not valid base64"),
        ("data:image/png," + "abc", MalformedImage, "data:image/<type>;base64"),
        (
            "data:image/png;base64," + base64.b64encode(b"not an image at all").decode(),
            MalformedImage,
            "could not be read",
        ),
        ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), MalformedImage, "not supported"),
        ("ftp://example.edu/x.png", MalformedImage, "https:// or a data: URL"),
    ],
)
def test_malformed_images_raise_typed_errors(url: str, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text) as exc:
        count_image_tokens(body(url), "qwen2-vl")
    assert exc.value.status == 400  # type: ignore[attr-defined]


def test_oversized_images_are_refused_by_bytes_and_by_pixels() -> None:
    url = png_data_url(300, 200)
    with pytest.raises(ImageTooLarge, match="byte limit"):
        count_image_tokens(body(url), "qwen2-vl", max_bytes=100)
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        count_image_tokens(body(url), "qwen2-vl", max_pixels=300 * 200 - 1)
    with pytest.raises(MalformedImage, match="detail"):
        count_image_tokens(body(url, detail="ultra"), "qwen2-vl")


def test_internvl_and_tiled_families() -> None:
    assert RULES["internvl"].count(448, 448, "auto") == 256
    assert RULES["internvl"].count(896, 448, "auto") == 256 * 3  # 2 tiles + thumbnail
    assert RULES["mllama"].count(560, 560, "auto") == 1601
    assert RULES["mllama"].count(4000, 4000, "auto") == 4 * 1601
    assert RULES["molmo"].count(336, 336, "auto") == 2 * 169
    assert RULES["gemini"].count(300, 300, "auto") == 258
    assert RULES["gemini"].count(1000, 700, "auto") == 258 * 2
    assert RULES["anthropic"].count(1000, 1000, "auto") == 1334
