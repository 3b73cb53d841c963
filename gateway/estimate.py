"""Stage 3: an upper bound of a request's prompt tokens, images included, before calling the model.

The bound must never be below what the provider will report, or a reservation
could be too small. No tokenizer gives that for every model family, but bytes
do: every BPE token of every tokenizer we route to covers at least one byte of
UTF-8 text, so the byte count of the text plus a per-message allowance for the
chat template is a true upper bound, and costs no tokenizer on the hot path.
It is loose (about 4x for English), which only matters near the end of a
budget; the settle step charges the provider's real count.

When the provider never reports usage, gateway/tokens.py counts what is charged
instead (a tokenizer, off the event loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import ApiError
from providers.errors import ImageError
from providers.images import count_image_tokens

# Allowances in tokens, each for what a provider adds around the text that the client did not send:
PER_REQUEST = 64  # BOS, the assistant header, and the system block some templates add by themselves
# (Llama 3.1's "Cutting Knowledge Date ..." block is about 25 tokens, Qwen2.5's default system prompt 20)
PER_MESSAGE = 8  # role markers and separators of the widest chat template we serve
PER_PROMPT = 2  # BOS/EOS (or an embedding model's [CLS]/[SEP]) around each prompt or input of a batch
# Tools, functions and response formats are rendered by the provider into the prompt, with a preamble:
# Anthropic's tool-use system prompt is 346 tokens, Qwen's and Llama's about 100, OpenAI's a dozen.
TOOLS_PER_REQUEST = 512
_TOOL_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format")
_dumps = orjson.dumps


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of a completions prompt or embeddings input: a string or an array of them (token ids
    are one token each)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(1 if type(v) is int else _text_bytes(v) for v in value)
    return len(str(value).encode()) if value is not None else 0


def _is_image(part: Any) -> bool:
    return type(part) is dict and part.get("type") == "image_url"


def _messages_bytes(messages: list[Any]) -> int:
    """Bytes of the messages as JSON, image parts left out (they are counted by the image rule).

    JSON, keys and escapes included, because templates render more than the text: Llama's renders a
    tool result with `tojson` (a control character becomes six bytes, `\\u0001`), tool calls are rendered
    as JSON objects with their names, and every BPE token still covers at least one byte of what was
    rendered. A tool call's `arguments` (a JSON string) are counted once more: vLLM parses them and the
    template re-renders them with a space after every separator, at most doubling their bytes."""
    total = 0
    plain = []
    for m in messages:
        content = m.get("content") if type(m) is dict else None
        if type(content) is list and any(map(_is_image, content)):
            total += len(_dumps({k: v for k, v in m.items() if k != "content"}))
            total += sum(len(_dumps(p)) for p in content if not _is_image(p))
        else:
            plain.append(m)
        calls = m.get("tool_calls") if type(m) is dict else None
        if type(calls) is list:
            for call in calls:
                fn = call.get("function") if type(call) is dict else None
                args = fn.get("arguments") if type(fn) is dict else None
                if type(args) is str:
                    total += len(args.encode())
        legacy = m.get("function_call") if type(m) is dict else None
        if type(legacy) is dict and type(legacy.get("arguments")) is str:
            total += len(legacy["arguments"].encode())
    return total + len(_dumps(plain))


def _rendered_schema_bytes(value: Any) -> int:
    """At least the bytes of `value` as the widest rendering a provider uses: Llama 3.1's template prints
    tools as JSON indented by four spaces, which is at most twice the two-space indentation orjson writes
    (each line's indent doubles, and the indent is part of the two-space text)."""
    return 2 * len(_dumps(value, option=orjson.OPT_INDENT_2))


def chat_prompt_bound(body: Mapping[str, Any]) -> int:
    messages = body.get("messages") or []
    total = PER_REQUEST + PER_MESSAGE * len(messages) + _messages_bytes(messages)
    tools = [body[f] for f in _TOOL_FIELDS if body.get(f) is not None]
    if tools:
        total += TOOLS_PER_REQUEST + sum(map(_rendered_schema_bytes, tools))
    return total


def completion_prompt_bound(body: Mapping[str, Any]) -> int:
    """Each prompt of a batch is tokenized on its own, with its BOS, and the suffix goes with each."""
    prompt = body.get("prompt")
    prompts = prompt if isinstance(prompt, list) and prompt and type(prompt[0]) is not int else [prompt]
    suffix = _text_bytes(body.get("suffix"))
    return PER_REQUEST + sum(_text_bytes(p) + PER_PROMPT + suffix for p in prompts)


def embedding_input_bound(body: Mapping[str, Any]) -> int:
    value = body.get("input")
    inputs = value if isinstance(value, list) and value and type(value[0]) is not int else [value]
    return PER_REQUEST + sum(_text_bytes(v) + PER_PROMPT for v in inputs)


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
