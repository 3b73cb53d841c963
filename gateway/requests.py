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


@dataclass(slots=True)
class ParsedRequest:
    kind: str  # chat | completion | embedding
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    wants_usage: bool  # the client itself asked for the usage chunk


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
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_request(f"'{name}' must be an integer >= {low}", param=name)
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
    if body.get("n", 1) != 1:
        raise bad_request("only n=1 is supported", param="n")
    return _common("chat", body)


def parse_completion(body: dict[str, Any]) -> ParsedRequest:
    _unknown(body, _KNOWN_COMPLETION)
    prompt = body.get("prompt")
    if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
        raise bad_request("'prompt' must be a string or a non-empty array", param="prompt")
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise bad_request("only n=1 and best_of=1 are supported", param="n")
    return _common("completion", body)


def parse_embedding(body: dict[str, Any]) -> ParsedRequest:
    _unknown(body, _KNOWN_EMBEDDING)
    value = body.get("input")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise bad_request("'input' must be a string or a non-empty array", param="input")
    parsed = _common("embedding", body)
    parsed.stream = False
    return parsed
