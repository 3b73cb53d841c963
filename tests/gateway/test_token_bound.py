"""The prompt bound no tokenizer can undercut (issue 16, acceptance), against real tokenizers.

For every request shape the gateway forwards, the reservation's prompt bound (gateway/estimate.py)
must be at least what a provider counts. Hypothesis draws the bodies (unicode text with control
characters, many messages, tool calls and results, tools with nested JSON schemas, response formats;
completions as strings, batches and token ids; embeddings), and each is counted as the provider would,
with its real vocabulary:

* OpenAI (o200k_base, cl100k_base): the per-message framing, and tools rendered into the system prompt
  in OpenAI's TypeScript-like `namespace functions` form;
* Llama 3.1 (llama3 vocabulary) and Qwen3 / Qwen2.5 (qwen3 vocabulary): the chat templates vLLM applies,
  written out here in Python (special tokens, the default system blocks, tools as JSON with Llama's
  four-space indent, tool calls and results).

Images are excluded (they are counted by the image rules, tested in tests/providers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.estimate import chat_prompt_bound, completion_prompt_bound, embedding_input_bound

quicktok = pytest.importorskip("quicktok")

ENCODINGS = {name: quicktok.get_encoding(name) for name in ("o200k_base", "cl100k_base", "llama3", "qwen3")}


def _tok(name: str, text: str) -> int:
    """Tokens of rendered text; special-token text in it counts as the special token, as servers do."""
    return len(ENCODINGS[name].encode_with_special_tokens(text))


def tojson(value: Any, indent: int | None = None) -> str:
    """transformers' `tojson` filter, which chat templates use."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


# -- strategies ---------------------------------------------------------------------------------------
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
word = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | text


def schemas(depth: int = 3) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "number", "integer", "boolean"])},
        optional={"description": text, "enum": st.lists(word, max_size=4)},
    )
    if depth == 0:
        return leaf
    inner = schemas(depth - 1)
    return (
        leaf
        | st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(word, inner, max_size=4)},
            optional={"description": text, "required": st.lists(word, max_size=2)},
        )
        | st.fixed_dictionaries({"type": st.just("array"), "items": inner})
    )


tools = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("function"),
         "function": st.fixed_dictionaries({"name": word}, optional={"description": text, "parameters": schemas()})}
    ),
    min_size=1, max_size=4,
)  # fmt: skip
arguments = st.dictionaries(word, json_scalars | st.lists(st.integers(0, 9), max_size=20), max_size=4).map(
    lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False)
)
tool_call = st.fixed_dictionaries(
    {"id": st.text("abc0123", max_size=8), "type": st.just("function"),
     "function": st.fixed_dictionaries({"name": word, "arguments": arguments})}
)  # fmt: skip
content = text | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=3
)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer"]), "content": content},
                          optional={"name": word}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none() | text},
                          optional={"tool_calls": st.lists(tool_call, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": text, "tool_call_id": st.text("abc0123", max_size=8)}),
)  # fmt: skip


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": draw(st.lists(message, min_size=1, max_size=12))}
    if draw(st.booleans()):
        body["tools"] = draw(tools)
    if draw(st.booleans()):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": draw(word), "schema": draw(schemas())},
        }
    return body


# -- how each provider renders a chat --------------------------------------------------------------------
def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p["text"] for p in content)
    return content or ""


def _ts_type(schema: dict[str, Any], indent: str) -> str:
    if schema.get("enum"):
        return " | ".join(json.dumps(e, ensure_ascii=False) for e in schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        lines = ["{"]
        for name, prop in schema.get("properties", {}).items():
            if "description" in prop:
                lines.append(f"{indent}// {prop['description']}")
            lines.append(f"{indent}{name}?: {_ts_type(prop, indent + '  ')},")
        return "\n".join([*lines, indent[:-2] + "}"])
    if kind == "array":
        return f"Array<{_ts_type(schema['items'], indent)}>"
    return {"integer": "number"}.get(kind or "any", kind or "any")


def openai_tokens(body: dict[str, Any], enc: str) -> int:
    """OpenAI's chat framing (3 tokens a message, 3 to prime the reply, name +1), tool calls as JSON,
    and tools and JSON schemas rendered into the system prompt as `namespace functions`."""
    n = 3
    for m in body["messages"]:
        n += 3 + _tok(enc, m["role"]) + _tok(enc, _text(m.get("content")))
        if "name" in m:
            n += 1 + _tok(enc, m["name"])
        for call in m.get("tool_calls") or ():
            fn = call["function"]
            n += 8 + _tok(enc, f"functions.{fn['name']}") + _tok(enc, fn["arguments"])
    system = []
    if "tools" in body:
        system.append("# Tools\n\n## functions\n\nnamespace functions {\n")
        for tool in body["tools"]:
            fn = tool["function"]
            if fn.get("description"):
                system.append(f"// {fn['description']}")
            params = fn.get("parameters")
            args = f"(_: {_ts_type(params, '  ')})" if params and params.get("type") == "object" else "()"
            system.append(f"type {fn['name']} = {args} => any;\n")
        system.append("} // namespace functions")
    if "response_format" in body:
        schema = body["response_format"]["json_schema"]
        system.append(f"# Response Formats\n\n## {schema['name']}\n\n{tojson(schema['schema'])}")
    if system:
        n += 3 + _tok(enc, "system") + _tok(enc, "\n".join(system))
    return n


def llama31_tokens(body: dict[str, Any]) -> int:
    """Meta's Llama 3.1 chat template (as vLLM applies it): BOS, a system block with the knowledge-cutoff
    dates always, tools as 4-space-indented JSON in the first user message, tool calls re-rendered with
    their arguments parsed, tool results JSON-encoded."""
    messages = list(body["messages"])
    out = ["<|begin_of_text|>"]
    system = ""
    if messages[0]["role"] == "system":
        system = _text(messages.pop(0)["content"]).strip()
    out.append("<|start_header_id|>system<|end_header_id|>\n\n")
    if "tools" in body:
        out.append("Environment: ipython\n")
    out.append("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" + system + "<|eot_id|>")
    if "tools" in body and messages:
        first = _text(messages.pop(0).get("content")).strip()
        out.append("<|start_header_id|>user<|end_header_id|>\n\n")
        out.append("Given the following functions, please respond with a JSON for a function call with its proper "
                   "arguments that best answers the given prompt.\n\n")  # fmt: skip
        out.append('Respond in the format {"name": function name, "parameters": dictionary of argument name and '
                   "its value}.Do not use variables.\n\n")  # fmt: skip
        for tool in body["tools"]:
            out.append(tojson(tool, indent=4) + "\n\n")
        out.append(first + "<|eot_id|>")
    for m in messages:
        role = {"tool": "ipython", "developer": "system"}.get(m["role"], m["role"])
        out.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
        if m["role"] == "tool":
            out.append(tojson(m["content"]))
        elif m.get("tool_calls"):
            for call in m["tool_calls"]:
                fn = call["function"]
                out.append(
                    '{"name": "'
                    + fn["name"]
                    + '", "parameters": '
                    + tojson(json.loads(fn["arguments"]))
                    + "}"
                )
        else:
            out.append(_text(m.get("content")).strip())
        out.append("<|eot_id|>")
    out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return _tok("llama3", "".join(out))


def qwen_tokens(body: dict[str, Any], default_system: bool) -> int:
    """Qwen's chat template (Qwen3; Qwen2.5 adds its default system prompt): tools as JSON lines inside
    <tools>, tool calls inside <tool_call>, tool results inside <tool_response> in a user turn, and the
    empty think block of a non-thinking reply."""
    messages = list(body["messages"])
    out = []
    system = _text(messages.pop(0)["content"]) if messages[0]["role"] == "system" else None
    if "tools" in body:
        out.append("<|im_start|>system\n" + (system + "\n\n" if system else ""))
        out.append("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                   "with function signatures within <tools></tools> XML tags:\n<tools>")  # fmt: skip
        for tool in body["tools"]:
            out.append("\n" + tojson(tool))
        out.append("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                   'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
                   "<args-json-object>}\n</tool_call><|im_end|>\n")  # fmt: skip
    elif system is not None:
        out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    elif default_system:
        out.append(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        )
    for m in messages:
        if m["role"] == "tool":
            out.append(f"<|im_start|>user\n<tool_response>\n{m['content']}\n</tool_response><|im_end|>\n")
            continue
        role = "system" if m["role"] == "developer" else m["role"]
        out.append(f"<|im_start|>{role}\n{_text(m.get('content'))}")
        for call in m.get("tool_calls") or ():
            fn = call["function"]
            out.append('\n<tool_call>\n{"name": "' + fn["name"] + '", "arguments": '
                       + tojson(json.loads(fn["arguments"])) + "}\n</tool_call>")  # fmt: skip
        out.append("<|im_end|>\n")
    out.append("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    return _tok("qwen3", "".join(out))


COUNTERS: dict[str, Callable[[dict[str, Any]], int]] = {
    "openai-o200k": lambda b: openai_tokens(b, "o200k_base"),
    "openai-cl100k": lambda b: openai_tokens(b, "cl100k_base"),
    "llama3.1": llama31_tokens,
    "qwen3": lambda b: qwen_tokens(b, default_system=False),
    "qwen2.5": lambda b: qwen_tokens(b, default_system=True),
}


# -- the properties ----------------------------------------------------------------------------------
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(chat_bodies())
@example({"model": "m", "messages": [{"role": "user", "content": "hi"}]})  # Llama's system block alone
@example({"model": "m", "messages": [{"role": "tool", "content": "\x01" * 50}]})  # \u0001 six bytes each
@example(
    {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a":[' + ",".join("1" * 40) + "]}"},
                    }
                ],
            }
        ],
    }
)
def test_the_chat_bound_is_never_below_a_providers_count(body: dict[str, Any]) -> None:  # fmt: skip
    bound = chat_prompt_bound(body)
    for name, count in COUNTERS.items():
        real = count(body)
        assert bound >= real, (name, real, bound)


prompt_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)
token_ids = st.lists(st.integers(0, 100_000), min_size=1, max_size=50)


@settings(max_examples=200, deadline=None)
@given(st.one_of(prompt_text, st.lists(prompt_text, min_size=1, max_size=10), token_ids,
                 st.lists(token_ids, min_size=1, max_size=5)), st.none() | prompt_text)  # fmt: skip
def test_the_completions_bound_is_never_below_a_providers_count(prompt: Any, suffix: str | None) -> None:
    body: dict[str, Any] = {"model": "m", "prompt": prompt}
    if suffix is not None:
        body["suffix"] = suffix
    bound = completion_prompt_bound(body)
    batch = prompt if isinstance(prompt, list) and not isinstance(prompt[0], int) else [prompt]
    for enc, bos in (("o200k_base", 0), ("cl100k_base", 0), ("llama3", 1), ("qwen3", 0)):
        real = sum(
            len(p) if isinstance(p, list) else bos + _tok(enc, p) + (_tok(enc, suffix) + 3 if suffix else 0)
            for p in batch
        )
        assert bound >= real, (enc, real, bound)


@settings(max_examples=200, deadline=None)
@given(st.one_of(prompt_text, st.lists(prompt_text, min_size=1, max_size=10), token_ids,
                 st.lists(token_ids, min_size=1, max_size=5)))  # fmt: skip
def test_the_embeddings_bound_is_never_below_a_providers_count(value: Any) -> None:
    bound = embedding_input_bound({"model": "m", "input": value})
    batch = value if isinstance(value, list) and not isinstance(value[0], int) else [value]
    for enc in ENCODINGS:
        # An encoder model wraps each input in two special tokens ([CLS] ... [SEP] or BOS ... EOS).
        real = sum(len(v) if isinstance(v, list) else _tok(enc, v) for v in batch) + 2 * len(batch)
        assert bound >= real, (enc, real, bound)
