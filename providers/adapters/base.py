"""What every adapter offers the router, and helpers they share.

An adapter turns the client's OpenAI-format body into one upstream HTTP
request, and the upstream's answer back into OpenAI-format bytes, capturing
usage on the way. The router owns the network; adapters never do I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from providers.config import DeploymentConfig
from providers.usage import NormalisedUsage

Endpoint = Literal["chat/completions", "completions", "embeddings"]

DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(slots=True)
class PreparedRequest:
    url: str
    headers: dict[str, str]
    data: bytes


class StreamProcessor(Protocol):
    """Fed raw upstream bytes as they arrive; returns the OpenAI SSE bytes to forward (maybe b"")."""

    usage: NormalisedUsage | None
    usage_estimated: bool

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """Upstream EOF: the bytes still owed to the client (translators end the stream here)."""
        ...


class Adapter(Protocol):
    def prepare(
        self,
        dep: DeploymentConfig,
        body: Mapping[str, Any],
        *,
        stream: bool,
        max_tokens: int | None,
        endpoint: Endpoint,
    ) -> PreparedRequest: ...

    def stream_processor(
        self, dep: DeploymentConfig, *, include_usage_chunk: bool, prompt_tokens_hint: int | None = None
    ) -> StreamProcessor: ...

    def translate_body(self, dep: DeploymentConfig, data: bytes) -> tuple[bytes, NormalisedUsage | None]:
        """A 2xx non-stream body, as OpenAI bytes, and its usage."""
        ...

    def translate_error(self, status: int, data: bytes) -> bytes:
        """A non-2xx body in OpenAI's error shape."""
        ...


def api_key(dep: DeploymentConfig) -> str | None:
    """Read at request time so a rotated key takes effect without a restart; never stored."""
    return os.environ.get(dep.api_key_env) if dep.api_key_env else None


def client_max_tokens(body: Mapping[str, Any]) -> int | None:
    v = body.get("max_completion_tokens")
    if v is None:
        v = body.get("max_tokens")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def effective_max_tokens(
    body: Mapping[str, Any], gateway_max: int | None, model_max: int | None
) -> int | None:
    """The smallest of the client's, the gateway's (budget clamp) and the model's output limit."""
    limits = [v for v in (client_max_tokens(body), gateway_max, model_max) if v is not None]
    return min(limits) if limits else None


def openai_error(status: int, message: str, etype: str | None = None, code: str | None = None) -> bytes:
    if etype is None:
        etype = "invalid_request_error" if status < 500 else "upstream_error"
        if status == 429:
            etype = "rate_limit_error"
    return orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


FINISH_REASONS_ANTHROPIC = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
