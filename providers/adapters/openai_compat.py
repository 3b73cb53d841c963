"""Passthrough to OpenAI-wire upstreams: OpenAI, Together.ai, Groq, Mistral, DeepSeek, vLLM, any base_url.

This is the hot path, so the body gets only the edits routing needs (model
name, usage forced on for streams, max_tokens clamp) and upstream bytes are
forwarded as they arrive. Events are only split and parsed when a chunk
might carry usage, so a typical content chunk costs two substring searches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from providers.adapters.base import (
    Endpoint,
    PreparedRequest,
    add_env_headers,
    api_key,
    effective_max_tokens,
)
from providers.config import DeploymentConfig
from providers.images import check_content_parts
from providers.prices import SELF_HOSTED_TYPES
from providers.sse import SSESplitter, event_json
from providers.upstream_errors import public_stream_error
from providers.usage import NormalisedUsage, from_openai

log = logging.getLogger(__name__)
# A top-level `"error"` key as bytes: a model's own text writes the quotes escaped (\"error\"), so only a
# server's error event (or a usage-free chunk naming such a key) takes the slower, event-by-event path.
_ERROR = b'"error"'

# Mistral's API refuses unknown fields and reports usage on its last chunk anyway.
_NO_STREAM_OPTIONS = frozenset({"mistral"})


def _usage_of(obj: Any) -> Mapping[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    groq = obj.get("x_groq")  # Groq puts stream usage here
    if isinstance(groq, dict) and isinstance(groq.get("usage"), dict):
        u: dict[str, Any] = groq["usage"]
        return u
    return None


class PassthroughStream:
    """Forwards upstream SSE bytes; captures usage; drops the usage-only chunk unless wanted.

    With `count_tokens` (provider option `stream_usage: counted`, for servers
    such as llama-cpp-python's that never put usage in a stream) every event
    is parsed and each content or tool-call delta counts as one output token,
    which is how these servers stream; input comes from the caller's hint.
    Reported usage still wins when the server does send it.
    """

    __slots__ = (
        "_count",
        "_drop_usage_chunk",
        "_hint",
        "_include_usage",
        "_split",
        "_tokens",
        "usage",
        "usage_estimated",
    )

    def __init__(
        self, include_usage_chunk: bool, count_tokens: bool = False, prompt_tokens_hint: int | None = None
    ) -> None:
        self._include_usage = include_usage_chunk
        self._drop_usage_chunk = not include_usage_chunk
        self._count = count_tokens
        self._hint = prompt_tokens_hint
        self._tokens = 0
        self._split = SSESplitter()
        self.usage: NormalisedUsage | None = None
        self.usage_estimated = False

    def feed(self, data: bytes) -> bytes:
        if (
            not self._count
            and not self._split._buf
            and data.endswith(b"\n\n")
            and b"\r" not in data
            and _ERROR not in data
        ):
            return self._pick_usage(data)  # whole events: pass them on, looking only at usage events
        out: list[bytes] = []
        for ev in self._split.feed(data):
            if self._count:
                if ev.startswith(b"data: [DONE]") and self.usage is None:
                    out.append(self._counted_usage())
                else:
                    self._count_event(ev)
            if _next_usage(ev, 0) >= 0 and not self._keep_usage_event(ev):
                continue  # (usage is taken from the event as the server sent it, error or not)
            if _ERROR in ev:  # an error event mid-answer: its text is the server's, not for students
                clean = public_stream_error(ev)
                if clean is not ev:
                    log.warning("upstream error event mid-stream: %s", ev[:300].decode(errors="replace"))
                    ev = clean
            out.append(ev)
            out.append(b"\n\n")
        return b"".join(out)

    def _pick_usage(self, data: bytes) -> bytes:
        """`data` holds whole events: copy it through, parsing only the events that carry usage (the
        upstream often sends a whole answer in one read, and OpenAI puts `"usage":null` in every
        chunk once usage is asked for; parsing each of those cost the gateway CPU)."""
        out: list[bytes] = []
        pos = 0  # everything before it has been copied or dropped
        while (hit := _next_usage(data, pos)) >= 0:
            start = data.rfind(b"\n\n", pos, hit)
            start = pos if start < 0 else start + 2
            end = data.find(b"\n\n", hit) + 2
            out.append(data[pos:start])
            if self._keep_usage_event(data[start : end - 2]):
                out.append(data[start:end])
            pos = end
        if not out:
            return data
        out.append(data[pos:])
        return b"".join(out)

    def _keep_usage_event(self, ev: bytes) -> bool:
        """Take the usage from an event that may carry it; False to drop it (a usage-only chunk the
        client did not ask for)."""
        found = event_json(ev)
        if found is None:
            return True
        obj = found[1]
        usage = _usage_of(obj)
        if usage is None:
            return True
        self.usage = from_openai(usage)
        self.usage_estimated = False
        return not (self._drop_usage_chunk and obj.get("choices") == [])

    def _count_event(self, ev: bytes) -> None:
        found = event_json(ev)
        if found is None:
            return
        obj = found[1]
        for choice in obj.get("choices") or () if isinstance(obj, dict) else ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls") or choice.get("text"):
                self._tokens += 1

    def _counted_usage(self) -> bytes:
        """Usage from counting, and the usage chunk the client asked for but the server never sent."""
        self.usage = NormalisedUsage(input=self._hint or 0, output=self._tokens)
        self.usage_estimated = True
        if not self._include_usage:
            return b""
        chunk = {"object": "chat.completion.chunk", "choices": [], "usage": self.usage.to_openai()}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def finish(self) -> bytes:
        rest = self._split.rest()
        out = self.feed(rest + b"\n\n") if rest else b""
        if self._count and self.usage is None:
            out += self._counted_usage()
        return out

    def reported(self) -> NormalisedUsage | None:
        return None if self.usage_estimated else self.usage

    def delivered(self) -> list[str] | None:
        return None  # passed through unparsed: each event carries one token (OpenAI, vLLM)


def _next_usage(data: bytes, pos: int) -> int:
    """Where the next usage object may be (`"usage": {...}` or Groq's `"x_groq"`), or -1; a
    `"usage": null` is skipped without parsing."""
    g = data.find(b'"x_groq"', pos)
    while True:
        u = data.find(b'"usage"', pos)
        if u < 0 or (0 <= g < u):
            return g
        after = data[u + 7 : u + 16].lstrip()
        if not (after.startswith(b":") and after[1:].lstrip().startswith(b"null")):
            return u
        pos = u + 7


class OpenAICompatAdapter:
    def prepare(
        self,
        dep: DeploymentConfig,
        body: Mapping[str, Any],
        *,
        stream: bool,
        max_tokens: int | None,
        endpoint: Endpoint,
    ) -> PreparedRequest:
        # Only parts the estimate counted, and for self-hosted servers images inline only (they fetch
        # links from inside the campus network): any endpoint, as vLLM's embeddings take messages too.
        check_content_parts(body, dep.provider_type, dep.provider_type in SELF_HOSTED_TYPES)
        b = dict(body)
        b["model"] = dep.upstream
        if endpoint != "embeddings":
            if stream:
                b["stream"] = True
                if dep.provider_type not in _NO_STREAM_OPTIONS:
                    so = b.get("stream_options")
                    so = dict(so) if isinstance(so, dict) else {}
                    so["include_usage"] = True
                    b["stream_options"] = so
            else:
                if b.get("stream"):
                    b["stream"] = False
                b.pop("stream_options", None)
            limit = effective_max_tokens(body, max_tokens, dep.max_output_tokens)
            if limit is not None:
                if "max_completion_tokens" in b and endpoint == "chat/completions":
                    b["max_completion_tokens"] = limit
                    b.pop("max_tokens", None)
                else:
                    b["max_tokens"] = limit
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **dep.headers}
        if dep.header_env:
            add_env_headers(dep, headers)
        key = api_key(dep)
        if key:
            headers["Authorization"] = "Bearer " + key
        return PreparedRequest(f"{dep.base_url}/{endpoint}", headers, orjson.dumps(b))

    def stream_processor(
        self, dep: DeploymentConfig, *, include_usage_chunk: bool, prompt_tokens_hint: int | None = None
    ) -> PassthroughStream:
        return PassthroughStream(include_usage_chunk, dep.stream_usage == "counted", prompt_tokens_hint)

    def translate_body(self, dep: DeploymentConfig, data: bytes) -> tuple[bytes, NormalisedUsage | None]:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data, None
        usage = _usage_of(obj)
        return data, (from_openai(usage) if usage is not None else None)

    def translate_error(self, status: int, data: bytes) -> bytes:
        return data
