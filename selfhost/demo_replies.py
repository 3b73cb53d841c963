"""What the demo model says, and how many tokens it bills: deterministic, following the request.

Prompt tokens are ceil(characters of text / 4) plus image tokens by the
Qwen2-VL rule (the demo stands in for a campus vision model), so a budget
test can predict them. The reply is a fixed word list walked from a seed
taken from the prompt; one word is one token and one stream chunk.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

from providers.images import count_image_tokens, qwen2_vl_rule

# The demo's image rule: Qwen2-VL with vLLM's usual campus cap of 1280 patches per image.
DEMO_IMAGE_RULE = qwen2_vl_rule(max_pixels=1280 * 28 * 28, name="demo")

WORDS = (
    "This is a demo reply from the EduAiQ demo model running locally so you can try the gateway "
    "without a GPU and every answer is made of plain words counted as tokens one by one"
).split()


def text_chars(body: Mapping[str, Any]) -> int:
    """Characters of every text the model would read: message text, tool calls and results, tool schemas."""
    n = 0
    for m in body.get("messages") or ():
        content = m.get("content")
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    n += len(str(part.get("text", "")))
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {}
            n += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
    if body.get("tools"):
        n += len(orjson.dumps(body["tools"]))
    return n


def prompt_tokens(body: Mapping[str, Any]) -> int:
    images = count_image_tokens(body, DEMO_IMAGE_RULE).total
    return math.ceil(text_chars(body) / 4) + images


def _seed_text(body: Mapping[str, Any]) -> str:
    msgs = body.get("messages") or ()
    for m in reversed(msgs):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(str(p.get("text", "")) for p in c if isinstance(p, Mapping))
    return ""


def reply_length(seed_text: str, fixed: int | None) -> int:
    """8..32 words decided by the prompt, unless the server was started with a fixed length."""
    if fixed is not None:
        return fixed
    return 8 + zlib.crc32(seed_text.encode()) % 25


def reply_words(seed_text: str, n: int) -> list[str]:
    start = zlib.crc32(seed_text.encode()) % len(WORDS)
    words = [WORDS[(start + i) % len(WORDS)] for i in range(n)]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def plan_reply(
    body: Mapping[str, Any], *, fixed_length: int | None, default_max_tokens: int
) -> tuple[list[str], str]:
    """(tokens of the reply, finish_reason) for a chat or completions body."""
    seed = _seed_text(body) if "messages" in body else _prompt_text(body.get("prompt"))
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    want = reply_length(seed, fixed_length)
    n = min(int(limit), want)
    return reply_words(seed, n), ("length" if n < want else "stop")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt)
    return ""


def completion_prompt_tokens(prompt: Any) -> int:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return math.ceil(len(_prompt_text(prompt)) / 4)


# -- tools ---------------------------------------------------------------------------------
def _example(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return "demo"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_example(schema.get("items"))]
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)
        return {k: _example(props.get(k)) for k in required}
    return "demo"


def pick_tool_call(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, JSON arguments) when the request has tools and the prompt asks for one; else None.

    The prompt asks when tool_choice forces a tool, or when the last message is
    the user's and mentions a tool by name or says "tool" / "call".
    """
    tools = [t.get("function") or {} for t in body.get("tools") or () if t.get("type") == "function"]
    if not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    msgs = body.get("messages") or ()
    last = msgs[-1] if msgs else {}
    chosen: Mapping[str, Any] | None = None
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        chosen = next((t for t in tools if t.get("name") == name), None)
    elif last.get("role") == "user":
        text = _seed_text(body).lower()
        chosen = next((t for t in tools if str(t.get("name", "")).lower() in text), None)
        if chosen is None and (choice == "required" or "tool" in text or "call" in text):
            chosen = tools[0]
    elif choice == "required":
        chosen = tools[0]
    if chosen is None:
        return None
    return str(chosen.get("name")), orjson.dumps(_example(chosen.get("parameters") or {})).decode()


# -- embeddings ----------------------------------------------------------------------------
def embedding(text: str, dims: int) -> list[float]:
    """A unit vector derived from the text's SHA-256: same text, same vector, on every machine."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((b / 127.5) - 1.0 for b in digest)
        counter += 1
    vec = out[:dims]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def embedding_b64(vec: list[float]) -> str:
    import base64

    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
