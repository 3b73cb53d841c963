"""What every adapter offers the router, and helpers they share.

An adapter turns the client's OpenAI-format body into one upstream HTTP
request, and the upstream's answer back into OpenAI-format bytes, capturing
usage on the way. The router owns the network; adapters never do I/O.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from providers.config import DeploymentConfig
from providers.errors import InvalidRequest
from providers.upstream_policy import header_value_ok
from providers.usage import NormalisedUsage

log = logging.getLogger(__name__)

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

    def reported(self) -> NormalisedUsage | None:
        """The usage the upstream has reported so far (None if none yet): what a stream cut before its
        end is billed at least, since providers bill what they reported (Anthropic's `message_start`
        input and `message_delta` output, Gemini's running `usageMetadata`)."""
        ...

    def delivered(self) -> list[str] | None:
        """The text (content, tool names and arguments) sent on so far, for a translator whose events carry
        any number of tokens; None for a passthrough, whose events carry one token each."""
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


_refused_vars: set[str] = set()


def env_secret(name: str | None) -> str | None:
    """A declared variable's value as it may go into a request head: surrounding whitespace dropped (a
    Kubernetes Secret made with --from-file ends in a newline), None when what is left is not one line of
    printable ASCII (it would end the head early at the upstream: header injection). Read at request time
    so a rotated key takes effect without a restart; never stored."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip()
    if header_value_ok(value):
        return value or None
    if name not in _refused_vars:  # once per variable: the operator learns it, the log is not flooded
        _refused_vars.add(name)
        log.error("variable %s holds line breaks or non-printable characters: not sent to any upstream", name)
    return None


def api_key(dep: DeploymentConfig) -> str | None:
    return env_secret(dep.api_key_env)


def secret_values(dep: DeploymentConfig) -> tuple[str, ...]:
    """Every secret the gateway sends this deployment (its key and `env:` headers): cut out of anything
    the upstream answers before a student sees it (a server may echo what it was sent)."""
    names = ([dep.api_key_env] if dep.api_key_env else []) + [var for _, var in dep.header_env]
    return tuple(v for v in (env_secret(n) for n in names) if v)


def add_env_headers(dep: DeploymentConfig, headers: dict[str, str]) -> None:
    """Headers the provider reads from declared variables (`env:NAME`), at request time like the key."""
    for name, var in dep.header_env:
        value = env_secret(var)
        if value:
            headers[name] = value


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


def content_parts(
    content: Any,
    provider: str,
    text: Callable[[str], dict[str, Any]],
    image: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """An OpenAI message's content (a string or a list of text and image_url parts) as the provider's
    parts, built by `text` and `image`; `image=None` where the provider takes no images (system turns)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [text(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("message content must be a string or a list of parts")
    out: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if part.get("text"):
                out.append(text(part["text"]))
        elif kind == "image_url" and image is not None:
            out.append(image(part))
        else:
            raise InvalidRequest(f"content part type '{kind}' is not supported for {provider} models")
    return out


def image_url(part: Mapping[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest("image_url part without a url")
    return url


def merge_turn(turns: list[dict[str, Any]], role: str, items: list[dict[str, Any]], key: str) -> None:
    """Append a turn, merging it into the previous one of the same role: Anthropic and Gemini both
    want user and model turns to alternate, which OpenAI message lists need not do."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def tool_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI's tool-call arguments (a JSON string) as the object Anthropic's `input` and Gemini's
    `args` require; a non-object value is wrapped as {"value": ...} rather than refused."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest("tool_calls[].function.arguments is not valid JSON") from None
    return value if isinstance(value, dict) else {"value": value}


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


def keep_text(into: list[str], delta: Mapping[str, Any]) -> None:
    """Collect the text of a chunk a translator sends on (content, tool names and arguments): what a stream
    cut before its provider's final usage is billed at least the count of."""
    content = delta.get("content")
    if content:
        into.append(content)
    for call in delta.get("tool_calls") or ():
        fn = call.get("function") or {}
        for part in (fn.get("name"), fn.get("arguments")):
            if part:
                into.append(part)
