"""Micro-benchmark: litellm's translation layer vs ours, for Anthropic and Gemini.

    python -m providers.bench_translate [--n 2000]

Measures, per call, the request transform (OpenAI body -> provider body) and
the streaming path (provider SSE event -> OpenAI chunk bytes, JSON parse and
serialise included on both sides so the work compared is the same).
litellm's parts: AnthropicConfig.map_openai_params + transform_request and
anthropic ModelResponseIterator.chunk_parser; VertexGeminiConfig.map_openai_params
+ transform_request_body and the Gemini ModelResponseIterator.chunk_parser.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

from providers.adapters.anthropic import AnthropicStream, to_anthropic
from providers.adapters.gemini import GeminiStream, to_gemini

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful teaching assistant for CS101."},
    {"role": "user", "content": "What is recursion? Explain with an example in Python."},
    {"role": "assistant", "content": "Recursion is when a function calls itself. For example, factorial..."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "And what does this diagram show?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "iVBORw0KGgo" * 40}},
        ],
    },
]
BODY = {"model": "m", "messages": MESSAGES, "max_tokens": 512, "temperature": 0.3, "tools": [TOOL]}


def _anthropic_events(n_text: int) -> list[dict[str, Any]]:
    start = {
        "type": "message_start",
        "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [], "usage": {"input_tokens": 120, "output_tokens": 1}},
    }  # fmt: skip
    ev: list[dict[str, Any]] = [
        start,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    ev += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" word{i}"}}
        for i in range(n_text)
    ]
    ev += [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": n_text}},
        {"type": "message_stop"},
    ]
    return ev


def _gemini_events(n_text: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n_text):
        cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": f" word{i}"}]}, "index": 0}
        if i == n_text - 1:
            cand["finishReason"] = "STOP"
        out.append(
            {
                "candidates": [cand],
                "usageMetadata": {
                    "promptTokenCount": 120,
                    "candidatesTokenCount": i + 1,
                    "totalTokenCount": 121 + i,
                },
                "modelVersion": "gemini-2.5-flash",
                "responseId": "r1",
            }
        )
    return out


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(200, n)):
        fn()
    t = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t) / n / 1000


def run(n: int = 2000, events: int = 50) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    t0 = time.perf_counter()
    import litellm  # noqa: F401
    from litellm.litellm_core_utils.litellm_logging import Logging
    from litellm.llms.anthropic.chat.handler import ModelResponseIterator as AnthropicIterator
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig
    from litellm.llms.vertex_ai.gemini import transformation as gemini_transformation
    from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import (
        ModelResponseIterator as GeminiIterator,
    )
    from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import VertexGeminiConfig

    import_s = time.perf_counter() - t0
    params = {"max_tokens": 512, "temperature": 0.3, "tools": [TOOL], "stream": True}
    acfg, gcfg = AnthropicConfig(), VertexGeminiConfig()

    def litellm_anthropic_request() -> object:
        op = acfg.map_openai_params(dict(params), {}, "claude-sonnet-4-5", False)
        msgs: Any = [dict(m) for m in MESSAGES]
        return acfg.transform_request("claude-sonnet-4-5", msgs, op, {}, {})

    def litellm_gemini_request() -> object:
        op = gcfg.map_openai_params(dict(params), {}, "gemini-2.5-flash", False)
        msgs: Any = [dict(m) for m in MESSAGES]
        return gemini_transformation.transform_request_body(msgs, "gemini-2.5-flash", op, "gemini", {}, None)

    a_raw = [orjson.dumps(e) for e in _anthropic_events(events)]
    a_sse = b"".join(b"event: " + orjson.loads(r)["type"].encode() + b"\ndata: " + r + b"\n\n" for r in a_raw)
    g_raw = [orjson.dumps(e) for e in _gemini_events(events)]
    g_sse = b"".join(b"data: " + r + b"\r\n\r\n" for r in g_raw)

    def litellm_anthropic_stream() -> None:
        it = AnthropicIterator(streaming_response=None, sync_stream=True)
        for r in a_raw:
            orjson.dumps(it.chunk_parser(orjson.loads(r)).model_dump())

    log = Logging(
        model="gemini-2.5-flash",
        messages=MESSAGES,
        stream=True,
        call_type="completion",
        start_time=datetime.datetime.now(),
        litellm_call_id="bench",
        function_id="bench",
    )
    log.update_environment_variables(
        model="gemini-2.5-flash", user=None, optional_params={}, litellm_params={}
    )

    def litellm_gemini_stream() -> None:
        it = GeminiIterator(streaming_response=None, sync_stream=True, logging_obj=log)
        for r in g_raw:
            chunk = it.chunk_parser(orjson.loads(r))
            if chunk is not None:
                orjson.dumps(chunk.model_dump())

    def ours_anthropic_stream() -> None:
        s = AnthropicStream("claude-sonnet-4-5", include_usage_chunk=True)
        s.feed(a_sse)
        s.finish()

    def ours_gemini_stream() -> None:
        s = GeminiStream("gemini-2.5-flash", include_usage_chunk=True)
        s.feed(g_sse)
        s.finish()

    per_stream = max(1, n // 20)
    return {
        "litellm_import_s": round(import_s, 2),
        "anthropic_request_us": {
            "litellm": round(_per_call_us(litellm_anthropic_request, n), 1),
            "ours": round(_per_call_us(lambda: to_anthropic(BODY, "claude-sonnet-4-5", 512, True), n), 1),
        },
        "anthropic_stream_us_per_event": {
            "litellm": round(_per_call_us(litellm_anthropic_stream, per_stream) / len(a_raw), 2),
            "ours": round(_per_call_us(ours_anthropic_stream, per_stream) / len(a_raw), 2),
        },
        "gemini_request_us": {
            "litellm": round(_per_call_us(litellm_gemini_request, n), 1),
            "ours": round(_per_call_us(lambda: to_gemini(BODY, 512), n), 1),
        },
        "gemini_stream_us_per_event": {
            "litellm": round(_per_call_us(litellm_gemini_stream, per_stream) / len(g_raw), 2),
            "ours": round(_per_call_us(ours_gemini_stream, per_stream) / len(g_raw), 2),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m providers.bench_translate")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--events", type=int, default=50)
    args = p.parse_args()
    print(orjson.dumps(run(args.n, args.events), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
