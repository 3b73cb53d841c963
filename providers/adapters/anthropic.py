"""OpenAI chat format <-> Anthropic Messages API, both directions, streaming included.

Our own translation rather than litellm's, because this runs per request
and per streamed event. providers/bench_translate.py on this 2-core machine:
request transform 108 us (litellm map_openai_params + transform_request) vs
3.5 us here; stream 23 us per event (litellm chunk_parser + dump) vs 2 us.
A 500-token answer would cost ~11 ms of CPU through litellm's parser.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from providers.adapters.base import (
    DONE_EVENT,
    FINISH_REASONS_ANTHROPIC,
    Endpoint,
    PreparedRequest,
    add_env_headers,
    api_key,
    content_parts,
    effective_max_tokens,
    image_url,
    keep_text,
    merge_turn,
    openai_error,
    sse,
    tool_arguments,
)
from providers.config import DeploymentConfig
from providers.dataurl import split_data_url
from providers.errors import InvalidRequest, RetryableUpstreamError, UnsupportedEndpoint
from providers.sse import SSESplitter, event_data
from providers.usage import NormalisedUsage, from_anthropic

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


def _image_block(part: Mapping[str, Any]) -> dict[str, Any]:
    url = image_url(part)
    if url.startswith("data:"):
        mime, data = split_data_url(url)
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _blocks(content: Any, *, images: bool = True) -> list[dict[str, Any]]:
    return content_parts(content, "anthropic", _text_block, _image_block if images else None)


def _append(msgs: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    merge_turn(msgs, role, blocks, "content")


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest("tool_choice must be auto, required, none or a named function")
    if parallel is False:
        out = dict(out or {"type": "auto"})
        out["disable_parallel_tool_use"] = True
    return out


def to_anthropic(body: Mapping[str, Any], upstream: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat body."""
    if (body.get("n") or 1) != 1:
        raise InvalidRequest("n > 1 is not supported for anthropic models")
    system: list[dict[str, Any]] = []
    msgs: list[dict[str, Any]] = []
    for m in body.get("messages") or ():
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(m.get("content"), images=False))
        elif role == "user":
            _append(msgs, "user", _blocks(m.get("content")))
        elif role == "assistant":
            blocks = _blocks(m.get("content"), images=False)
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": tc.get("id"),
                        "name": fn.get("name"),
                        "input": tool_arguments(fn.get("arguments")),
                    }
                )
            _append(msgs, "assistant", blocks)
        elif role == "tool":
            content = m.get("content")
            result = content if isinstance(content, str) else _blocks(content)
            _append(
                msgs,
                "user",
                [{"type": "tool_result", "tool_use_id": m.get("tool_call_id"), "content": result}],
            )
        else:
            raise InvalidRequest(f"message role '{role}' is not supported for anthropic models")
    out: dict[str, Any] = {"model": upstream, "messages": msgs, "max_tokens": max_tokens}
    if system:
        out["system"] = system
    if stream:
        out["stream"] = True
    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = min(float(temperature), 1.0)  # Anthropic's range is 0..1
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in tools
            if t.get("type") == "function"
        ]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


def from_anthropic_message(msg: Mapping[str, Any]) -> tuple[dict[str, Any], NormalisedUsage]:
    """A Messages API response as an OpenAI chat.completion."""
    text: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in msg.get("content") or ():
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    usage = from_anthropic(msg.get("usage") or {})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {
        "id": "chatcmpl-" + str(msg.get("id", "")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": FINISH_REASONS_ANTHROPIC.get(str(msg.get("stop_reason")), "stop"),
            }
        ],
        "usage": usage.to_openai(),
    }
    return body, usage


class AnthropicStream:
    """Anthropic's event stream in, OpenAI chat.completion.chunk SSE out."""

    __slots__ = (
        "_base",
        "_blocks",
        "_done",
        "_finish",
        "_include_usage",
        "_raw_usage",
        "_split",
        "_text",
        "_tools",
        "usage",
        "usage_estimated",
    )

    def __init__(self, model: str, include_usage_chunk: bool) -> None:
        self._split = SSESplitter()
        self._text: list[str] = []  # what was sent on: a cut stream is billed at least its count
        self._include_usage = include_usage_chunk
        self._base: dict[str, Any] = {
            "id": "",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self._blocks: dict[int, int] = {}  # anthropic content block index -> OpenAI tool_call index
        self._tools = 0
        self._finish = "stop"
        self._raw_usage: dict[str, Any] = {}
        self._done = False
        self.usage: NormalisedUsage | None = None
        self.usage_estimated = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        keep_text(self._text, delta)
        c = dict(self._base)
        c["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return sse(c)

    def _event(self, obj: Mapping[str, Any]) -> bytes:
        kind = obj.get("type")
        if kind == "content_block_delta":
            d = obj.get("delta") or {}
            if d.get("type") == "text_delta":
                return self._chunk({"content": d.get("text", "")})
            if d.get("type") == "input_json_delta":
                ti = self._blocks.get(obj.get("index", -1))
                if ti is None:
                    return b""
                return self._chunk(
                    {"tool_calls": [{"index": ti, "function": {"arguments": d.get("partial_json", "")}}]}
                )
            return b""
        if kind == "message_start":
            msg = obj.get("message") or {}
            self._base["id"] = "chatcmpl-" + str(msg.get("id", ""))
            if msg.get("model"):
                self._base["model"] = msg["model"]
            self._raw_usage.update(msg.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                ti = self._tools
                self._tools += 1
                self._blocks[obj.get("index", -1)] = ti
                call = {
                    "index": ti,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return self._chunk({"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return b""
        if kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason:
                self._finish = FINISH_REASONS_ANTHROPIC.get(reason, "stop")
            self._raw_usage.update({k: v for k, v in (obj.get("usage") or {}).items() if v is not None})
            return b""
        if kind == "message_stop":
            return self._end()
        if kind == "error":
            err = obj.get("error") or {}
            raise RetryableUpstreamError(f"anthropic stream error: {err.get('type')}: {err.get('message')}")
        return b""  # ping, content_block_stop, unknown future events

    def _end(self) -> bytes:
        self._done = True
        self.usage = from_anthropic(self._raw_usage)
        out = [self._chunk({}, self._finish)]
        if self._include_usage:
            c = dict(self._base)
            c["choices"] = []
            c["usage"] = self.usage.to_openai()
            out.append(sse(c))
        out.append(DONE_EVENT)
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._split.feed(data):
            payload = event_data(ev)
            if not payload or self._done:
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise RetryableUpstreamError("anthropic stream sent an event that is not JSON") from None
            chunk = self._event(obj)
            if chunk:
                out.append(chunk)
        return b"".join(out)

    def finish(self) -> bytes:
        tail = self._split.rest()
        out = self.feed(tail + b"\n\n") if tail else b""
        if not self._done:
            raise RetryableUpstreamError("anthropic stream ended before message_stop")
        return out

    def delivered(self) -> list[str] | None:
        return self._text

    def reported(self) -> NormalisedUsage | None:
        return from_anthropic(self._raw_usage) if self._raw_usage else None


class AnthropicAdapter:
    def prepare(
        self,
        dep: DeploymentConfig,
        body: Mapping[str, Any],
        *,
        stream: bool,
        max_tokens: int | None,
        endpoint: Endpoint,
    ) -> PreparedRequest:
        if endpoint != "chat/completions":
            raise UnsupportedEndpoint(f"model '{dep.model_id}' (anthropic) only serves /v1/chat/completions")
        limit = effective_max_tokens(body, max_tokens, dep.max_output_tokens) or DEFAULT_MAX_TOKENS
        req = to_anthropic(body, dep.upstream, limit, stream)
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "anthropic-version": ANTHROPIC_VERSION,
            **dep.headers,
        }
        if dep.header_env:
            add_env_headers(dep, headers)
        key = api_key(dep)
        if key:
            headers["x-api-key"] = key
        return PreparedRequest(f"{dep.base_url}/messages", headers, orjson.dumps(req))

    def stream_processor(
        self, dep: DeploymentConfig, *, include_usage_chunk: bool, prompt_tokens_hint: int | None = None
    ) -> AnthropicStream:
        return AnthropicStream(dep.upstream, include_usage_chunk)

    def translate_body(self, dep: DeploymentConfig, data: bytes) -> tuple[bytes, NormalisedUsage | None]:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise RetryableUpstreamError("anthropic answered 200 with a body that is not JSON") from None
        body, usage = from_anthropic_message(msg)
        return orjson.dumps(body), usage

    def translate_error(self, status: int, data: bytes) -> bytes:
        try:
            err = orjson.loads(data).get("error") or {}
            return openai_error(status, str(err.get("message", "")), code=err.get("type"))
        except (orjson.JSONDecodeError, AttributeError):
            return openai_error(status, data.decode(errors="replace")[:500] or f"upstream status {status}")
