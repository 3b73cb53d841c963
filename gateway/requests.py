"""Reading a client's request body: strict enough to give a clear 400, loose enough for every client.

The body is parsed once with orjson and kept as a dict, because it is passed on
to the upstream almost unchanged: validating it into models and dumping it back
would cost more than the rest of the gateway's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import ApiError, bad_request

_KNOWN_CHAT = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stop", "seed", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "response_format", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    "user", "metadata", "store", "reasoning_effort", "modalities", "prediction", "service_tier", "top_k",
    "min_p", "repetition_penalty",
}  # fmt: skip
_KNOWN_COMPLETION = {
    "model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "stop", "seed",
    "logprobs", "echo", "best_of", "presence_penalty", "frequency_penalty", "logit_bias", "user", "suffix",
}  # fmt: skip
_KNOWN_EMBEDDING = {"model", "input", "encoding_format", "dimensions", "user"}
_ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
# Deeper JSON than any real request needs (a tool's JSON schema nests a handful of levels). Refused with a
# 400 because every recursive reader behind parse_json (the prompt bound, orjson.dumps towards the
# upstream, the providers' translators) would otherwise fail on it with a 503 the SDKs retry, and a
# traceback thousands of lines long per request.
MAX_JSON_DEPTH = 64
_CONTAINERS = (dict, list)
# Far above any model's output and any sane n, far below what the budget engine can compute exactly.
_MAX_INT_FIELD = 10**9


@dataclass(slots=True)
class ParsedRequest:
    kind: str  # chat | completion | embedding
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    wants_usage: bool  # the client itself asked for the usage chunk
    # Completions the upstream generates for this request: prompts x max(n, best_of) for /v1/completions,
    # n for chat. Each may use max_tokens, so the reservation's output is max_tokens x choices, and the
    # clamp sent upstream (per completion) is the reservation's output divided by it.
    choices: int = 1
    choices_param: str = "n"  # the field a refusal of too many choices names


def _too_deep(raw: bytes, body: Any) -> bool:
    """Nesting deeper than MAX_JSON_DEPTH. Nesting needs a bracket per level, so a body with few brackets
    (counted at C speed) is shallow without a walk; the others are walked container by container."""
    if raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH:
        return False
    level: list[Any] = [body]
    for _ in range(MAX_JSON_DEPTH):
        deeper: list[Any] = []
        for value in level:
            for v in value.values() if type(value) is dict else value:
                if type(v) in _CONTAINERS:
                    deeper.append(v)
        if not deeper:
            return False
        level = deeper
    return True


def parse_json(raw: bytes, limit: int) -> dict[str, Any]:
    if len(raw) > limit:
        raise ApiError(
            413, f"request body is {len(raw)} bytes; the limit is {limit}", code="request_too_large"
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    if _too_deep(raw, body):
        raise bad_request(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                          code="invalid_json")  # fmt: skip
    return body


def _unknown(body: dict[str, Any], known: set[str]) -> None:
    if body.keys() <= known:
        return
    extra = sorted(k for k in body if k not in known)
    if extra:
        raise bad_request(f"unrecognized request argument(s): {', '.join(extra)}", param=extra[0],
                          code="unknown_parameter")  # fmt: skip


def _int_field(body: dict[str, Any], name: str, low: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_INT_FIELD:
        raise bad_request(f"'{name}' must be an integer from {low} to {_MAX_INT_FIELD}", param=name)
    return value


def _common(kind: str, body: dict[str, Any]) -> ParsedRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    wants_usage = bool(stream and options and options.get("include_usage") is True)
    max_tokens = _int_field(body, "max_tokens")
    if kind == "chat":
        completion_max = _int_field(body, "max_completion_tokens")
        if completion_max is not None:
            max_tokens = completion_max if max_tokens is None else min(max_tokens, completion_max)
    return ParsedRequest(kind, body, model, stream, max_tokens, wants_usage)


def parse_chat(body: dict[str, Any]) -> ParsedRequest:
    _unknown(body, _KNOWN_CHAT)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}",
                              param=f"messages[{i}].role")  # fmt: skip
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"messages[{i}].content must be a string or an array of parts",
                              param=f"messages[{i}].content")  # fmt: skip
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise bad_request(f"messages[{i}].content[{j}] must be an object with a 'type'",
                                      param=f"messages[{i}].content[{j}]")  # fmt: skip
    parsed = _common("chat", body)
    parsed.choices = _int_field(body, "n") or 1
    return parsed


def parse_completion(body: dict[str, Any]) -> ParsedRequest:
    _unknown(body, _KNOWN_COMPLETION)
    prompts = prompt_count(body.get("prompt"))
    parsed = _common("completion", body)
    n = _int_field(body, "n") or 1
    best_of = _int_field(body, "best_of")
    if best_of is not None and best_of < n:
        raise bad_request("'best_of' must be at least 'n'", param="best_of")
    # best_of candidates are all generated (and billed) server-side; n of them are returned.
    per_prompt = max(n, best_of or 1)
    parsed.choices = prompts * per_prompt
    parsed.choices_param = "prompt" if prompts > 1 and per_prompt == 1 else ("best_of" if best_of else "n")
    return parsed


def _is_int(v: Any) -> bool:
    return type(v) is int


def prompt_count(prompt: Any) -> int:
    """How many prompts a completions `prompt` holds, the shapes OpenAI and vLLM accept: a string, token
    ids, an array of strings or an array of token-id arrays. Anything else is a 400 naming the field."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if _is_int(first) and all(map(_is_int, prompt)):
            return 1
        if isinstance(first, str) and all(isinstance(p, str) for p in prompt):
            return len(prompt)
        if all(isinstance(p, list) and p and all(map(_is_int, p)) for p in prompt):
            return len(prompt)
    raise bad_request("'prompt' must be a string, an array of strings, an array of token ids or an array "
                      "of non-empty token-id arrays", param="prompt")  # fmt: skip


def check_choices(parsed: ParsedRequest, limit: int) -> None:
    """Refuse more completions per request than the operator allows (EDUAIQ_MAX_CHOICES)."""
    if parsed.choices > limit:
        raise bad_request(f"this request asks for {parsed.choices} completions ('{parsed.choices_param}'); "
                          f"the limit is {limit} per request", param=parsed.choices_param,
                          code="too_many_choices")  # fmt: skip


def parse_embedding(body: dict[str, Any]) -> ParsedRequest:
    _unknown(body, _KNOWN_EMBEDDING)
    value = body.get("input")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise bad_request("'input' must be a string or a non-empty array", param="input")
    parsed = _common("embedding", body)
    parsed.stream = False
    return parsed
